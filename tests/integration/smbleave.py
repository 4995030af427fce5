#!/usr/bin/python3
"""smbleave: leave a written file open, and the tree or session with it.

  smbleave.py PORT SHARE USER PASSWORD PATH LOCAL tdis|logoff|wait

Over one SMB 3.0 connection: write LOCAL's bytes to PATH (created, kept
open), then, without closing PATH, send a TREE_DISCONNECT ("tdis") or a
LOGOFF ("logoff"); smbd then closes PATH itself.  Afterwards, on the same
connection (a new tree connect) or, after a logoff, on a new one, read
PATH back.  Prints one JSON line: seconds the TDIS or LOGOFF took, and the
SHA-256 and size of the bytes read back.

"wait" prints "written" once PATH is written and waits for a line on
stdin (meanwhile the caller removes SHARE from smb.conf and reloads, so
that smbd disconnects the tree itself), then sends an ECHO and prints
"echo ok".  Debian's python3-impacket under
/usr/bin/python3 (see fsattr.py).
"""
import hashlib
import io
import json
import sys
import time

from smbopen import connect, write_open


def main():
    port, share, user, password, path, local, how = sys.argv[1:8]
    conn = connect(port, user, password)
    tid = conn.connectTree(share)
    write_open(conn, tid, path, local)
    if how == "wait":
        print("written", flush=True)
        sys.stdin.readline()
        conn.getSMBServer().echo()
        print("echo ok", flush=True)
        return
    start = time.monotonic()
    if how == "tdis":
        conn.disconnectTree(tid)
    else:
        conn.logoff()
    took = round(time.monotonic() - start, 3)
    if how != "tdis":
        conn.close()
        conn = connect(port, user, password)
    out = io.BytesIO()
    conn.getFile(share, path, out.write)
    conn.logoff()
    data = out.getvalue()
    print(json.dumps({"seconds": took, "sha256": hashlib.sha256(data).hexdigest(),
                      "size": len(data)}), flush=True)


if __name__ == "__main__":
    main()
