"""The documentation an admin reads: the man page renders, and it and
smb.conf.sample name every parameter of the module's one table (which
bucketfs-ctl parameters prints)."""
import os
import re
import subprocess

from world import B, TOP


def parameters():
    """{name: (kind, default, reload)} from bucketfs-ctl parameters."""
    p = subprocess.run([f"{B}/bucketfs-ctl", "parameters"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    assert rows and all(len(r) == 4 and r[0].startswith("bucketfs:") for r in rows), p.stdout
    return {r[0].removeprefix("bucketfs:"): tuple(r[1:]) for r in rows}


def test_bucketfs_ctl_lists_every_parameter_with_its_kind_and_default():
    params = parameters()
    assert len(params) > 15, params
    assert params["block size"] == ("size", "1M", "new connections"), params["block size"]
    assert params["metadata ttl"][2] == "reload", params["metadata ttl"]


def test_the_man_page_renders_and_documents_every_parameter():
    page = os.path.join(TOP, "docs/vfs_bucketfs.8")
    p = subprocess.run(["man", "--warnings=w", "-l", page], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    text = re.sub(r"\s+", " ", p.stdout)
    missing = [n for n in sorted(parameters()) if f"bucketfs:{n}" not in text]
    assert not missing, f"not in the man page: {missing}"


def test_smb_conf_sample_names_every_parameter():
    with open(os.path.join(TOP, "smb.conf.sample")) as f:
        sample = f.read()
    missing = [n for n in sorted(parameters()) if f"bucketfs:{n}" not in sample]
    assert not missing, f"not in smb.conf.sample: {missing}"
