"""pytest fixtures of the integration tests (tests/test_*.py).

Session: `world`, the S3 side (s3rver behind the SigV4-checking front, the
fault-injecting fronts, the users of every smbd), `sources`, the objects
seeded in its bucket, and `imds`, the instance metadata stand-in.  Each test file starts
the smbd it needs with the shares it declares next to its tests:

    SHARES = '''
    [rwlocal]
      path = /bucketfs/rwlocal
    {faulty}  bucketfs:prefix = rwlocal
      bucketfs:cache dir = {t}/bfscache-rwlocal
    '''
    w = smbd_fixture("engine", SHARES)

    def test_a_close_answers_before_s3_has_the_file(w):
        ...

See World.serve (tests/world.py) for what the braces stand for.  KEEP=1
keeps the run's folder; it is printed at the end.
"""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from world import TOP, World, free_port, seed, stop_procs, wait_port  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "alone: changes what every test of the machine shares (the clock, "
        "the installed module) or needs the machine to itself (a benchmark "
        "that must pass); make test runs these after the others, one at a time")


@pytest.fixture(scope="session")
def world():
    tmp = tempfile.mkdtemp(prefix="bucketfs-pytest.")
    w = World(tmp)
    try:
        w.start_users()
        yield w
    finally:
        for cleanup in getattr(w, "cleanups", []):
            cleanup()
        stop_procs()
        if os.environ.get("KEEP"):
            print(f"\n# state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def sources(world):
    """The objects of awkward sizes and names put in the test bucket
    (world.seed): {key: the local file it came from}."""
    return seed(world)


class ImdsStandin:
    """tests/integration/imds_standin.py: an EC2 instance metadata service
    (IMDSv2) handing out role credentials KEYS in turn, each valid
    LIFETIME seconds, and a SigV4 front before the world's s3rver that
    takes exactly those keys.  stop() and start() take the service away
    and bring it back on its port."""

    KEYS = "IMDSKEY1:imds-secret-1,IMDSKEY2:imds-secret-2"
    LIFETIME = 303  # inside the 300 s refresh margin 3 s after issue

    def __init__(self, w):
        self.w = w
        self.port, self.front_port = free_port(), free_port()
        self.log = f"{w.tmp}/imds.log"
        w.spawn([sys.executable, os.path.join(TOP, "tests/integration/s3_front.py"),
                 str(self.front_port), str(w.s3_port), "--keys", self.KEYS], "front-imds")
        wait_port(self.front_port, "front for the role's keys")
        self.proc = None
        self.start()

    def start(self):
        if self.proc is None:
            self.proc = self.w.spawn(
                [sys.executable, os.path.join(TOP, "tests/integration/imds_standin.py"),
                 str(self.port), "--keys", self.KEYS, "--lifetime", str(self.LIFETIME)],
                "imds")
            wait_port(self.port, "imds stand-in")

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="session")
def imds(world):
    """The instance metadata stand-in and its front (ImdsStandin)."""
    i = ImdsStandin(world)
    yield i
    i.stop()


def smbd_fixture(name, shares, **kw):
    """A module fixture: an smbd with these shares (World.serve) for the
    tests of one file, stopped after its last test."""
    @pytest.fixture(scope="module")
    def smbd(world):
        v = world.serve(name, shares, **kw)
        try:
            yield v
        finally:
            v.stop()
    return smbd


# Test files import it from here: `from conftest import smbd_fixture`.
__all__ = ["smbd_fixture"]
