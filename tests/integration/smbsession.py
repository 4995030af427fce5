#!/usr/bin/python3
"""smbsession: one SMB connection, driven line by line, as a mounted box
keeps one while things around it change.

  smbsession.py PORT SHARE USER PASSWORD

Reads commands from stdin, one a line, and answers each with one line:
  ls DIR          -> "ok NAME NAME ..." (names of the directory)
  get PATH LOCAL  -> "ok SIZE" once PATH's bytes are in LOCAL
  write PATH LOCAL -> "ok SIZE": PATH created (or truncated) and LOCAL's
                     bytes written to it, in 1 MiB writes; it stays open
  rewrite PATH LOCAL -> "ok SIZE": LOCAL's bytes written over open PATH
                     from its start, on the same open
  open PATH       -> "ok SECONDS": existing PATH opened for writing (as a
                     job opens its checkpoint to fsync it), left open
  flush PATH      -> "ok SECONDS" once the SMB2 FLUSH of open PATH answers
  sendflush PATH  -> "ok": the SMB2 FLUSH of open PATH sent, not waited for
  waitflush PATH  -> "ok SECONDS" once that FLUSH answers
  reopen NAME PATH -> "ok": existing PATH opened again for writing, as
                     NAME (a second open for the commands above)
  close PATH      -> "ok SECONDS" once the close of open PATH answers
  quit
A failure answers "err STATUS" (the NT status name).  Debian's
python3-impacket under /usr/bin/python3, over SMB 3.0 (see fsattr.py).
"""
import sys
import time

from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection, SessionError


def main():
    port, share, user, password = int(sys.argv[1]), *sys.argv[2:5]
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port,
                         preferredDialect=s3.SMB2_DIALECT_30, timeout=120)
    conn.login(user, password)
    tid = None  # connected at the first write: ls and get connect their own
    open_files = {}
    pending = {}  # PATH -> (message id, time sent) of a FLUSH not waited for
    print("ok connected", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        try:
            if words[0] == "ls":
                path = words[1].strip("/").replace("/", "\\")
                names = [f.get_longname() for f in
                         conn.listPath(share, path + "\\*" if path else "*")]
                print("ok " + " ".join(n for n in names if n not in (".", "..")), flush=True)
            elif words[0] == "get":
                with open(words[2], "wb") as out:
                    conn.getFile(share, words[1], out.write)
                    size = out.tell()
                print(f"ok {size}", flush=True)
            elif words[0] in ("write", "rewrite"):
                tid = tid if tid is not None else conn.connectTree(share)
                if words[0] == "write":
                    open_files[words[1]] = conn.createFile(
                        tid, words[1], desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                        shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE,
                        creationDisposition=s3.FILE_OVERWRITE_IF)
                fid = open_files[words[1]]
                size = 0
                with open(words[2], "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        conn.writeFile(tid, fid, chunk, size)
                        size += len(chunk)
                print(f"ok {size}", flush=True)
            elif words[0] == "open":
                tid = tid if tid is not None else conn.connectTree(share)
                start = time.monotonic()
                open_files[words[1]] = conn.createFile(
                    tid, words[1], desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                    shareMode=s3.FILE_SHARE_READ, creationDisposition=s3.FILE_OPEN)
                print(f"ok {time.monotonic() - start:.3f}", flush=True)
            elif words[0] == "reopen":
                tid = tid if tid is not None else conn.connectTree(share)
                open_files[words[1]] = conn.createFile(
                    tid, words[2], desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                    shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE,
                    creationDisposition=s3.FILE_OPEN)
                print("ok", flush=True)
            elif words[0] == "sendflush":
                smb = conn.getSMBServer()
                packet = smb.SMB_PACKET()
                packet["Command"] = s3.SMB2_FLUSH
                packet["TreeID"] = tid
                body = s3.SMB2Flush()
                body["FileID"] = open_files[words[1]]
                packet["Data"] = body
                pending[words[1]] = (smb.sendSMB(packet), time.monotonic())
                print("ok", flush=True)
            elif words[0] == "waitflush":
                smb = conn.getSMBServer()
                msg, start = pending.pop(words[1])
                answer = smb.recvSMB(msg)
                if answer["Status"] != 0:
                    print(f"err 0x{answer['Status']:08x}", flush=True)
                else:
                    print(f"ok {time.monotonic() - start:.3f}", flush=True)
            elif words[0] in ("flush", "close"):
                fid = open_files[words[1]]
                start = time.monotonic()
                if words[0] == "flush":
                    conn.getSMBServer().flush(tid, fid)
                else:
                    try:
                        conn.closeFile(tid, fid)
                    except KeyError:
                        # Closed; impacket keeps one entry per path, which
                        # the close of another open of the path took.
                        conn.getSMBServer()._Session["OpenTable"].pop(fid, None)
                    del open_files[words[1]]
                print(f"ok {time.monotonic() - start:.3f}", flush=True)
            else:
                print("err unknown command", flush=True)
        except SessionError as e:
            print(f"err {e.getErrorString()[0]}", flush=True)
    conn.logoff()


if __name__ == "__main__":
    main()
