#!/usr/bin/python3
"""smbckpt: a checkpoint writer's loop on one SMB connection.

  smbckpt.py PORT SHARE USER PASSWORD NAME CYCLES

Over one SMB 3.0 connection, CYCLES times: write NAME.tmp (created or
emptied) with that cycle's bytes, close it, rename it over NAME
(SET_INFO FileRenameInformation, ReplaceIfExists), then open NAME, read
it whole and close it, as a training job saves a checkpoint and reads it
back.  A cycle's bytes are its own (seeded by its number); sizes repeat
(1 byte, 1 byte, 4 KiB, 4 KiB, 64 KiB + 1), so that consecutive versions
often differ in content only.  Prints one JSON line: the cycles whose
read-back was not that cycle's bytes (with the SHA-256 prefixes of what
came back and of what was written), the last cycle's SHA-256, and the
median and worst seconds of a cycle.  Debian's python3-impacket under
/usr/bin/python3 (see fsattr.py).
"""
import hashlib
import json
import random
import sys
import time

from impacket import smb3structs as s3

from smbopen import connect

SIZES = (1, 1, 4096, 4096, 65537)


def version(i):
    return random.Random(i).randbytes(SIZES[i % len(SIZES)])


def main():
    port, share, user, password, name = sys.argv[1:6]
    cycles = int(sys.argv[6])
    conn = connect(port, user, password)
    tid = conn.connectTree(share)
    wrong, took = [], []
    data = b""
    for i in range(cycles):
        data = version(i)
        start = time.monotonic()
        fid = conn.createFile(tid, f"{name}.tmp",
                              desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                              shareMode=s3.FILE_SHARE_READ,
                              creationDisposition=s3.FILE_OVERWRITE_IF)
        conn.writeFile(tid, fid, data, 0)
        conn.closeFile(tid, fid)
        conn.rename(share, f"{name}.tmp", name)
        fid = conn.openFile(tid, name, desiredAccess=s3.FILE_READ_DATA,
                            shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE |
                            s3.FILE_SHARE_DELETE)
        got = conn.readFile(tid, fid, 0, len(data) + 4096)
        conn.closeFile(tid, fid)
        took.append(time.monotonic() - start)
        if got != data:
            wrong.append({"cycle": i, "got": hashlib.sha256(got).hexdigest()[:12],
                          "got_len": len(got),
                          "want": hashlib.sha256(data).hexdigest()[:12]})
    took.sort()
    print(json.dumps({"cycles": cycles, "wrong": wrong,
                      "last_sha256": hashlib.sha256(data).hexdigest(),
                      "median_s": took[len(took) // 2], "max_s": took[-1]}))


if __name__ == "__main__":
    main()
