#!/usr/bin/python3
"""smbpipeline: what a mounted box does on its one connection, at once.

  smbpipeline.py PORT SHARE USER PASSWORD PATH LOCAL CACHED [flush|close|rmw|rename]

Over one SMB 3.0 connection: write LOCAL's bytes to PATH (created, kept
open), open CACHED for reading, then send three requests without waiting
for any answer, as the Linux kernel client multiplexes its processes'
requests: an SMB2 FLUSH (or, given "close", a CLOSE) of PATH, an SMB2
ECHO, and a 64 KiB READ of CACHED.  Given "rmw", PATH is an existing file,
opened without truncating it, and the first request is a WRITE of LOCAL's
bytes (one write) at its offset 0: a read-modify-write, which needs PATH's
old bytes first; PATH is closed after the three answers.  Given "rename",
PATH is an existing file or folder, opened for delete, and the first
request renames it to LOCAL (a path in the share; a SET_INFO, as a
checkpoint folder renamed into place).  Prints one JSON
line: the order the three final answers came in (the first named "flush",
"close" or "rmw"), seconds
from sending to each answer, their NT statuses, the READ's byte count,
and the seconds the close of PATH took after them (0 when the CLOSE was
the first request).  Interim answers (STATUS_PENDING, for requests smbd
runs asynchronously) are not counted.  Debian's python3-impacket under
/usr/bin/python3 (see fsattr.py).
"""
import json
import sys
import time

from Cryptodome.Cipher import AES
from impacket import smb3structs as s3
from impacket.nt_errors import STATUS_PENDING

from smbopen import connect, write_open


def answer(smb, data):
    """An SMB2 answer, decrypted as impacket's recvSMB does (the test smbd
    encrypts once the session asks for it)."""
    raw = data.get_trailer()
    if raw.startswith(b"\xfdSMB"):
        th = s3.SMB2_TRANSFORM_HEADER(raw)
        cipher = AES.new(smb._Session["DecryptionKey"], AES.MODE_CCM, th["Nonce"][:11])
        cipher.update(th.getData()[20:])
        raw = cipher.decrypt(raw[len(s3.SMB2_TRANSFORM_HEADER()):])
    return s3.SMB2Packet(raw)


def main():
    port, share, user, password, path, local, cached = sys.argv[1:8]
    first = sys.argv[8] if len(sys.argv) > 8 else "flush"
    conn = connect(port, user, password)
    tid = conn.connectTree(share)
    if first == "rmw":
        fid = conn.createFile(tid, path, desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                              shareMode=s3.FILE_SHARE_READ,
                              creationDisposition=s3.FILE_OPEN)
    elif first == "rename":
        fid = conn.createFile(tid, path, desiredAccess=s3.DELETE | s3.FILE_READ_ATTRIBUTES,
                              shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE |
                              s3.FILE_SHARE_DELETE, creationOption=0,
                              creationDisposition=s3.FILE_OPEN)
    else:
        fid = write_open(conn, tid, path, local)
    rfid = conn.openFile(tid, cached, desiredAccess=s3.FILE_READ_DATA)
    smb = conn.getSMBServer()

    sent = {}
    flush = smb.SMB_PACKET()
    flush["Command"] = {"flush": s3.SMB2_FLUSH, "close": s3.SMB2_CLOSE,
                        "rmw": s3.SMB2_WRITE, "rename": s3.SMB2_SET_INFO}[first]
    flush["TreeID"] = tid
    if first == "rename":
        to = local.replace("/", "\\")
        info = s3.FILE_RENAME_INFORMATION_TYPE_2()
        info["ReplaceIfExists"] = 0
        info["RootDirectory"] = b"\x00" * 8
        info["FileNameLength"] = len(to) * 2
        info["FileName"] = to.encode("utf-16le")
        body = s3.SMB2SetInfo()
        body["InfoType"] = s3.SMB2_0_INFO_FILE
        body["FileInfoClass"] = s3.SMB2_FILE_RENAME_INFO
        body["BufferLength"] = len(info)
        body["AdditionalInformation"] = 0
        body["Buffer"] = info
    elif first == "rmw":
        body = s3.SMB2Write()
        with open(local, "rb") as f:
            body["Buffer"] = f.read()
        body["Length"] = len(body["Buffer"])
        body["Offset"] = 0
        body["WriteChannelInfoOffset"] = 0
    else:
        body = s3.SMB2Flush() if first == "flush" else s3.SMB2Close()
    body["FileID"] = fid
    flush["Data"] = body
    echo = smb.SMB_PACKET()
    echo["Command"] = s3.SMB2_ECHO
    echo["Data"] = s3.SMB2Echo()
    read = smb.SMB_PACKET()
    read["Command"] = s3.SMB2_READ
    read["TreeID"] = tid
    body = s3.SMB2Read()
    body["Padding"] = 0x50
    body["FileID"] = rfid
    body["Length"] = 65536
    body["Offset"] = 0
    read["Data"] = body
    start = time.monotonic()
    for name, packet in ((first, flush), ("echo", echo), ("read", read)):
        sent[smb.sendSMB(packet)] = name

    order, seconds, status, read_bytes = [], {}, {}, 0
    while len(order) < 3:
        data = smb._NetBIOSSession.recv_packet(300)
        packet = answer(smb, data)
        name = sent.get(packet["MessageID"])
        if name is None or packet["Status"] == STATUS_PENDING or name in seconds:
            continue
        order.append(name)
        seconds[name] = round(time.monotonic() - start, 3)
        status[name] = "0x%08x" % packet["Status"]
        if name == "read" and packet["Status"] == 0:
            read_bytes = len(s3.SMB2Read_Response(packet["Data"])["Buffer"])
    conn.closeFile(tid, rfid)
    start = time.monotonic()
    if first in ("flush", "rmw", "rename"):
        conn.closeFile(tid, fid)
    closed = round(time.monotonic() - start, 3)
    conn.logoff()
    print(json.dumps({"order": order, "seconds": seconds, "status": status,
                      "read_bytes": read_bytes, "close_seconds": closed}), flush=True)


if __name__ == "__main__":
    main()
