"""The Debian package (issue 24): make deb, and what an admin does with it.

Each test installs build/deb's package into this machine's real dpkg and
samba, as README.md's "Installing on a server" says, and puts the machine
back afterwards: the package is purged, and the module `make install` put
where the package's goes (smbd's MODULESDIR/vfs/bucketfs.so) is restored.

A Samba upgrade is simulated with apt itself: a local repository offers a
newer `samba` (a control-only package that is never installed) and apt's
resolver is asked, with -s, what `apt-get upgrade` would do.
"""
import os
import re
import shutil
import subprocess
import textwrap
import time

import pytest

from world import B, TOP, s3_has, sh, sha256

# Installs the package over the module every smbd of the machine loads.
pytestmark = pytest.mark.alone

SAMBA_VERSION = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "samba"],
                               capture_output=True, text=True, check=True).stdout
MODULESDIR = re.search(r"MODULESDIR: (\S+)", sh(["smbd", "-b"]).stdout).group(1)
MODULE = f"{MODULESDIR}/vfs/bucketfs.so"
PKG_CACHE = "/var/cache/bucketfs"  # the default cache folders, the purge's


@pytest.fixture(scope="module")
def deb():
    """make deb, once for the file: the package's path."""
    p = sh(["make", "-s", "-C", TOP, "deb"], check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    debs = [f for f in os.listdir(f"{B}/deb") if re.fullmatch(r"bucketfs_[^_]+_amd64\.deb", f)]
    assert len(debs) == 1, debs
    return f"{B}/deb/{debs[0]}"


def installed():
    p = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "bucketfs"],
                       capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else "not-known"


@pytest.fixture
def machine(world):
    """Puts back what a test's install and purge change: make install's
    module, and a /var/cache/bucketfs that was there before."""
    saved_module = f"{world.tmp}/make-install-bucketfs.so"
    shutil.copy2(MODULE, saved_module)
    saved_cache = None
    if os.path.exists(PKG_CACHE):
        saved_cache = f"{world.tmp}/var-cache-bucketfs"
        shutil.move(PKG_CACHE, saved_cache)
    try:
        yield
    finally:
        if installed() not in ("not-known", "not-installed"):
            sh(["dpkg", "--purge", "bucketfs"], check=False,
               env=dict(os.environ, BUCKETFS_REMOVE_PENDING="yes"))
        shutil.copy2(saved_module, MODULE)
        shutil.rmtree(PKG_CACHE, ignore_errors=True)
        if saved_cache:
            shutil.move(saved_cache, PKG_CACHE)


def apt_install(deb):
    return sh(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb],
              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def share_section(w, name):
    """A writable bucketfs share behind the fault front, with the default
    cache folder (/var/cache/bucketfs/NAME) and the default engine."""
    _, faulty = w.share_parts(w.tmp)
    return (f"[{name}]\n  path = /bucketfs/{name}\n{faulty}  bucketfs:prefix = pkg-{name}\n"
            "  bucketfs:upload retry = 5\n")


def test_make_deb_builds_a_package_lintian_passes_and_it_depends_on_exactly_this_samba(deb):
    with open(f"{B}/deb/lintian.log") as f:
        lintian = f.read()
    assert not re.search(r"^E:", lintian, re.M), lintian
    depends = sh(["dpkg-deb", "-f", deb, "Depends"]).stdout
    assert f"samba (= {SAMBA_VERSION})" in depends, depends
    files = sh(["dpkg-deb", "-c", deb]).stdout
    for path in (MODULE, "/usr/bin/bucketfs-ctl", "/usr/sbin/bucketfsd",
                 "/usr/sbin/bucketfs-lease", "/usr/share/man/man8/vfs_bucketfs.8.gz",
                 "/usr/share/doc/bucketfs/examples/smb.conf.sample",
                 "/lib/systemd/system/bucketfsd@.service"):
        assert f".{path}" in files, (path, files)
    # The unit starts the package's engine, not make install's.
    unit = sh(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | "
               "tar -xO ./lib/systemd/system/bucketfsd@.service"]).stdout
    assert "ExecStart=/usr/sbin/bucketfsd " in unit, unit


def test_the_package_installs_serves_a_share_after_a_reload_and_removes_and_purges_clean(
        world, deb, machine):
    # README "Installing on a server", step by step.
    apt_install(deb)
    assert installed() == "installed"
    listed = [p for p in sh(["dpkg", "-L", "bucketfs"]).stdout.splitlines()
              if os.path.lexists(p) and not os.path.isdir(p)]
    assert MODULE in listed and "/usr/sbin/bucketfsd" in listed, listed
    packed = f"{B}/deb/packed-bucketfs.so"
    sh(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xO .{MODULE} > {packed}"])
    assert sha256(MODULE) == sha256(packed)  # the package's module, not make install's
    for tool in ("bucketfs-ctl", "bucketfsd", "bucketfs-lease"):  # the man page covers them
        assert sh(["man", "-w", tool]).stdout.strip() == "/usr/share/man/man8/vfs_bucketfs.8.gz"

    # smbd runs without the share; the admin adds it and reloads.
    v = world.serve("package", "")
    try:
        with open(v.conf, "a") as f:
            f.write(share_section(v, "pkgshare"))
        sh(["smbcontrol", "-s", v.conf, "smbd", "reload-config"])
        src = world.make("pkg-ckpt.bin", 3 << 20)
        end = time.monotonic() + 30
        while v.smbclient("pkgshare", "ls", check=False).returncode != 0:
            assert time.monotonic() < end, v.smb_log()[-3000:]
            time.sleep(0.5)
        v.smbclient("pkgshare", f'put {src} "ckpt.bin"')
        got = f"{world.tmp}/pkg-ckpt.got"
        v.smbclient("pkgshare", f'get "ckpt.bin" {got}')
        assert sha256(got) == sha256(src)
        assert s3_has(world, "pkg-pkgshare/ckpt.bin", sha256(src)), \
            sh(["/usr/bin/bucketfs-ctl", "-s", v.conf, "pkgshare", "pending"]).stdout
        # The close went to the package's engine and cache folder.
        engine = sh(["pgrep", "-af", "bucketfsd"], check=False).stdout
        assert f"/usr/sbin/bucketfsd -s {v.conf} pkgshare" in engine, engine
        assert os.path.isdir(f"{PKG_CACHE}/pkgshare")
        assert sh(["/usr/bin/bucketfs-ctl", "-s", v.conf, "pkgshare", "pending"]).stdout == ""

        env = dict(os.environ, BUCKETFS_SMB_CONF=v.conf, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "remove", "-y", "-q", "bucketfs"], env=env)
        assert installed() in ("config-files", "not-installed")
        # A tree connect now fails; the log says which module is missing.
        assert v.smbclient("pkgshare", "ls", check=False).returncode != 0
        sh(["apt-get", "purge", "-y", "-q", "bucketfs"], env=env)
    finally:
        v.stop()
    assert installed() in ("not-known", "not-installed")
    left = [p for p in listed if os.path.lexists(p)]
    assert left == [], left
    for d in (PKG_CACHE, "/usr/share/doc/bucketfs"):
        assert not os.path.exists(d), d
    assert "ckpt.bin" in "".join(world.s3_keys("pkg-pkgshare/"))  # S3 keeps its data


def test_removing_the_package_is_refused_while_a_share_has_changes_not_yet_in_s3(
        world, deb, machine):
    apt_install(deb)
    v = world.serve("package-pending", share_section(world, "pkgpending"))
    env = dict(os.environ, BUCKETFS_SMB_CONF=v.conf)
    try:
        world.fault("PUT deny -1")  # S3 refuses every upload for now
        src = world.make("pkg-pending.bin", 1 << 20)
        v.smbclient("pkgpending", f'put {src} "held.bin"')  # acknowledged: close = local
        p = sh(["dpkg", "--remove", "bucketfs"], check=False, env=env)
        assert p.returncode != 0, p.stdout
        assert re.search(r"share pkgpending has \d+ change\(s\) not yet in S3", p.stderr), p.stderr
        assert installed() == "installed" and os.path.exists(MODULE)
        world.fault("PUT deny 0")
        assert s3_has(world, "pkg-pkgpending/held.bin", sha256(src)), \
            sh(["/usr/bin/bucketfs-ctl", "-s", v.conf, "pkgpending", "pending"]).stdout
        end = time.monotonic() + 30
        while sh(["/usr/bin/bucketfs-ctl", "-s", v.conf, "pkgpending", "pending"]).stdout:
            assert time.monotonic() < end, "the journal still holds the upload"
            time.sleep(0.3)
        sh(["dpkg", "--remove", "bucketfs"], env=env)
        assert installed() in ("config-files", "not-installed")
    finally:
        world.fault("PUT deny 0")
        v.stop()


def control_only_deb(folder, name, version, depends=""):
    """A package with nothing in it but its control file."""
    root = f"{folder}/{name}-{version}"
    os.makedirs(f"{root}/DEBIAN")
    with open(f"{root}/DEBIAN/control", "w") as f:
        f.write(textwrap.dedent(f"""\
            Package: {name}
            Version: {version}
            Architecture: amd64
            Maintainer: bucketfs tests <bucketfs@example.org>
            Description: stand-in for an update, never installed
            """) + (f"Depends: {depends}\n" if depends else ""))
    sh(["dpkg-deb", "--build", "--root-owner-group", root, f"{folder}/{name}_{version}_amd64.deb"])


def apt_upgrade_simulated(repo, status):
    """What `apt-get upgrade` would do with repo as its only source and
    status as dpkg's database: (the packages it keeps back, those it
    installs)."""
    lists = f"{repo}.lists"
    os.makedirs(f"{lists}/partial", exist_ok=True)
    with open(f"{repo}.list", "w") as f:
        f.write(f"deb [trusted=yes] file:{repo} ./\n")
    sh(["sh", "-c", f"cd {repo} && dpkg-scanpackages --multiversion . > Packages"])
    opts = [f"-o=Dir::Etc::SourceList={repo}.list", "-o=Dir::Etc::SourceParts=/nonexistent",
            f"-o=Dir::State::Lists={lists}", f"-o=Dir::State::status={status}",
            "-o=Dir::Cache::pkgcache=", "-o=Dir::Cache::srcpkgcache=",
            "-o=Debug::NoLocking=1"]
    sh(["apt-get", "-q", *opts, "update"])
    out = sh(["apt-get", "-s", *opts, "upgrade"]).stdout
    kept = re.search(r"kept back:\n((?:  .*\n)+)", out)
    return (kept.group(1).split() if kept else [],
            re.findall(r"^Inst (\S+) \[", out, re.M), out)


def test_apt_keeps_samba_back_until_a_bucketfs_built_for_the_new_samba_is_available(
        world, deb, machine):
    apt_install(deb)
    repo = f"{world.tmp}/apt-repo"
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    newer = SAMBA_VERSION + "+bfstest1"  # the Samba point release apt is offered
    control_only_deb(repo, "samba", newer)

    # Without bucketfs (its stanza taken out of a copy of dpkg's status)
    # apt would upgrade samba: the stand-in is upgradable.
    with open("/var/lib/dpkg/status") as f:
        stanzas = f.read().split("\n\n")
    without = f"{world.tmp}/status-without-bucketfs"
    with open(without, "w") as f:
        f.write("\n\n".join(s for s in stanzas if not s.startswith("Package: bucketfs\n")))
    kept, inst, out = apt_upgrade_simulated(repo, without)
    assert "samba" in inst and "samba" not in kept, out

    # With it, samba stays where the module was built, and apt says so.
    kept, inst, out = apt_upgrade_simulated(repo, "/var/lib/dpkg/status")
    assert "samba" in kept and "samba" not in inst, out

    # Once a bucketfs built for the new samba is offered, both move together.
    control_only_deb(repo, "bucketfs", "0.9.0+samba" + newer.replace(":", "."),
                     depends=f"samba (= {newer})")
    kept, inst, out = apt_upgrade_simulated(repo, "/var/lib/dpkg/status")
    assert {"samba", "bucketfs"} <= set(inst) and kept == [], out
    # Nothing was installed for real.
    assert sh(["dpkg-query", "-W", "-f=${Version}", "samba"]).stdout == SAMBA_VERSION
    assert installed() == "installed"


OTHER = "bucketfs_othersamba"


def test_a_module_built_for_another_samba_fails_its_shares_tree_connects_with_one_clear_line(
        world):
    """As after a Samba upgrade the package did not hold back (a forced
    one): the module refuses to load, each tree connect of its share fails
    with one log line saying what to run, and the other shares go on."""
    installed_other = f"{MODULESDIR}/vfs/{OTHER}.so"
    plain = f"{world.tmp}/plain-share"
    os.makedirs(plain, exist_ok=True)
    with open(f"{plain}/hello.txt", "w") as f:
        f.write("hello\n")
    shutil.copy2(f"{B}/othersamba/{OTHER}.so", installed_other)
    shares = (share_section(world, "pkgother").replace("vfs objects = bucketfs",
                                                     f"vfs objects = {OTHER}")
              + f"[pkgplain]\n  path = {plain}\n  read only = yes\n"
              + share_section(world, "pkgfine")
              + f"  bucketfs:cache dir = {world.tmp}/package-other/bfscache-fine\n")
    v = world.serve("package-other", shares)
    try:
        for _ in range(2):
            p = v.smbclient("pkgother", "ls", check=False)
            assert p.returncode != 0, p.stdout
        lines = [ln for ln in v.smb_log().splitlines() if "refusing to load" in ln]
        assert len(lines) == 2, lines  # one per tree connect
        smbd_version = sh(["smbd", "-V"]).stdout.split()[1]
        assert (f"built for Samba 4.16.99, refusing to load into smbd {smbd_version}; "
                "rebuild and reinstall it: make install") in lines[0], lines
        assert "hello.txt" in v.smbclient("pkgplain", "ls").stdout
        v.smbclient("pkgfine", "ls")
    finally:
        v.stop()
        os.remove(installed_other)


def next_version_deb(deb):
    """The same sources as the next version (a changelog entry on top of a
    copy of make deb's tree), built with dpkg-buildpackage: its path."""
    version = sh(["dpkg-deb", "-f", deb, "Version"]).stdout.strip()
    nxt = version + "+next1"
    tree = f"{B}/deb-next/bucketfs-{nxt}"
    shutil.rmtree(f"{B}/deb-next", ignore_errors=True)
    shutil.copytree(f"{B}/deb/bucketfs-{version}", tree, symlinks=True,
                    ignore=shutil.ignore_patterns("obj-*", ".debhelper"))
    with open(f"{tree}/debian/changelog") as f:
        old = f.read()
    with open(f"{tree}/debian/changelog", "w") as f:
        f.write(f"bucketfs ({nxt}) unstable; urgency=medium\n\n  * The next version, for "
                "tests/test_package.py.\n\n -- bucketfs developers <bucketfs@example.org>  "
                "Thu, 03 Dec 2026 22:00:00 +0000\n\n" + old)
    p = sh(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return f"{B}/deb-next/bucketfs_{nxt}_amd64.deb"


def test_an_upgrade_of_bucketfs_ends_the_old_engine_and_the_new_one_finishes_its_uploads(
        world, deb, machine):
    nxt = next_version_deb(deb)
    apt_install(deb)
    v = world.serve("package-upgrade", share_section(world, "pkgup"))
    try:
        world.fault("PUT deny -1")  # the upload waits in the old engine
        src = world.make("pkg-upgrade.bin", 2 << 20)
        v.smbclient("pkgup", f'put {src} "across.bin"')
        old = sh(["pgrep", "-f", f"^/usr/sbin/bucketfsd -s {v.conf} pkgup"]).stdout.split()
        assert len(old) == 1, old
        apt_install(nxt)
        assert sh(["dpkg-query", "-W", "-f=${Version}", "bucketfs"]).stdout.endswith("+next1")
        end = time.monotonic() + 30
        while os.path.exists(f"/proc/{old[0]}"):
            assert time.monotonic() < end, "the old engine still runs"
            time.sleep(0.2)
        world.fault("PUT deny 0")
        v.smbclient("pkgup", "ls")  # the next need starts the new engine
        assert s3_has(world, "pkg-pkgup/across.bin", sha256(src)), \
            sh(["/usr/bin/bucketfs-ctl", "-s", v.conf, "pkgup", "pending"]).stdout
        new = sh(["pgrep", "-f", f"^/usr/sbin/bucketfsd -s {v.conf} pkgup"]).stdout.split()
        assert new and new != old, (old, new)
        assert os.readlink(f"/proc/{new[0]}/exe") == "/usr/sbin/bucketfsd"  # not "(deleted)"
    finally:
        world.fault("PUT deny 0")
        v.stop()


def test_a_reinstall_of_samba_runs_its_triggers_and_bucketfs_stays_installed_and_serving(
        world, deb, machine):
    """What dpkg does on a Samba update short of a new version (the one
    here is the only one available): samba's files replaced, its
    maintainer scripts and triggers run.  bucketfs stays installed, its
    module untouched, and a restarted smbd serves its shares."""
    apt_install(deb)
    module = sha256(MODULE)
    v = world.serve("package-reinstall", share_section(world, "pkgre"))
    made_policy = not os.path.exists("/usr/sbin/policy-rc.d")
    try:
        if made_policy:  # services stay as they are, as in a container
            with open("/usr/sbin/policy-rc.d", "w") as f:
                f.write("#!/bin/sh\nexit 101\n")
            os.chmod("/usr/sbin/policy-rc.d", 0o755)
        src = world.make("pkg-reinstall.bin", 1 << 20)
        v.smbclient("pkgre", f'put {src} "before.bin"')
        p = sh(["apt-get", "install", "--reinstall", "-y", "-q", "-o",
                "Dpkg::Options::=--force-confold", "samba"],
               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), check=False)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        assert re.search(r"(Unpacking|Preparing to unpack).*samba", p.stdout), p.stdout[-2000:]
        assert sh(["dpkg-query", "-W", "-f=${Version}", "samba"]).stdout == SAMBA_VERSION
        assert installed() == "installed" and sha256(MODULE) == module
        v.restart_smbd()  # as samba's postinst restarts the system's
        got = f"{world.tmp}/pkg-reinstall.got"
        v.smbclient("pkgre", f'put {src} "after.bin"; get "before.bin" {got}')
        assert sha256(got) == sha256(src)
        assert s3_has(world, "pkg-pkgre/after.bin", sha256(src))
    finally:
        if made_policy:
            os.remove("/usr/sbin/policy-rc.d")
        v.stop()
