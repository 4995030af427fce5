"""pytest fixtures of the integration tests (tests/test_*.py).

Session: `world`, the S3 side (s3rver behind the SigV4-checking front, the
fault-injecting fronts, the users of every smbd), and `sources`, the
objects seeded in its bucket.  Each test file starts
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

from world import World, seed, stop_procs  # noqa: E402


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
