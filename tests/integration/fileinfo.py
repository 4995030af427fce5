#!/usr/bin/python3
"""fileinfo: set and read a file's times and DOS attributes as Windows does.

  fileinfo.py PORT SHARE USER PASSWORD copy NAME CREATE WRITE ATTRS
      create (or overwrite) NAME, write 4 bytes, then SETINFO
      FileBasicInformation with the given create and write times (NT time,
      100 ns since 1601; 0: unchanged) and attributes (hex; 0: unchanged)
      on the same handle before the close: what robocopy, Explorer and
      Python's shutil.copy2 do
  ... set NAME CREATE WRITE ATTRS     the same SETINFO on an open that only
      asks FILE_WRITE_ATTRIBUTES (attrib +h, a touch of the times)
  ... query NAME                      prints "CREATE WRITE CHANGE ATTRS"
  ... write NAME                      opens NAME for writing, writes a byte
  ... delete NAME                     deletes NAME (delete on close)
  ... temp NAME                       creates NAME with DELETE_ON_CLOSE,
      writes to it and closes it, as Windows programs make temporary files
Each prints "ok" or the NTSTATUS as 0x%08x (write and delete), or what it
read (query).  Debian's python3-impacket, run with /usr/bin/python3.
"""
import struct
import sys

from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection, SessionError

SHARE_ALL = s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE | s3.FILE_SHARE_DELETE


def basic_info(create, write, attrs):
    # CreationTime, LastAccessTime, LastWriteTime, ChangeTime, attributes,
    # reserved; a 0 time or attribute set leaves that field unchanged.
    return struct.pack("<qqqqII", create, 0, write, 0, attrs, 0)


def main():
    port, share, user, password, cmd, name = (int(sys.argv[1]), *sys.argv[2:7])
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port,
                         preferredDialect=s3.SMB2_DIALECT_30)
    conn.login(user, password)
    tid = conn.connectTree(share)
    smb = conn.getSMBServer()
    try:
        if cmd in ("copy", "set"):
            create, write, attrs = int(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9], 16)
            if cmd == "copy":
                fid = conn.createFile(tid, name, desiredAccess=s3.GENERIC_ALL,
                                      shareMode=SHARE_ALL,
                                      creationDisposition=s3.FILE_OVERWRITE_IF)
                conn.writeFile(tid, fid, b"data", 0)
            else:
                fid = conn.openFile(tid, name, desiredAccess=s3.FILE_WRITE_ATTRIBUTES,
                                    shareMode=SHARE_ALL,
                                    creationDisposition=s3.FILE_OPEN)
            smb.setInfo(tid, fid, basic_info(create, write, attrs),
                        infoType=s3.SMB2_0_INFO_FILE,
                        fileInfoClass=s3.SMB2_FILE_BASIC_INFO)
            conn.closeFile(tid, fid)
            print("ok")
        elif cmd == "query":
            fid = conn.openFile(tid, name, desiredAccess=s3.FILE_READ_ATTRIBUTES,
                                shareMode=SHARE_ALL, creationDisposition=s3.FILE_OPEN)
            blob = smb.queryInfo(tid, fid, infoType=s3.SMB2_0_INFO_FILE,
                                 fileInfoClass=s3.SMB2_FILE_BASIC_INFO)
            conn.closeFile(tid, fid)
            create, _, write, change, attrs = struct.unpack_from("<qqqqI", blob)
            print(f"{create} {write} {change} 0x{attrs:x}")
        elif cmd == "write":
            fid = conn.openFile(tid, name, desiredAccess=s3.FILE_WRITE_DATA,
                                shareMode=SHARE_ALL, creationDisposition=s3.FILE_OPEN)
            conn.writeFile(tid, fid, b"x", 0)
            conn.closeFile(tid, fid)
            print("ok")
        elif cmd == "temp":
            # DELETE by name: smbd refuses delete on close without it
            # (generic rights are mapped after that check).
            fid = conn.createFile(tid, name,
                                  desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA |
                                  s3.FILE_READ_ATTRIBUTES | s3.FILE_WRITE_ATTRIBUTES |
                                  s3.DELETE,
                                  shareMode=SHARE_ALL,
                                  creationOption=s3.FILE_DELETE_ON_CLOSE,
                                  creationDisposition=s3.FILE_CREATE)
            conn.writeFile(tid, fid, b"scratch", 0)
            conn.closeFile(tid, fid)
            print("ok")
        elif cmd == "delete":
            conn.deleteFile(share, name)
            print("ok")
        else:
            sys.exit(f"fileinfo: unknown command {cmd}")
    except SessionError as e:
        # What a refused write, delete or temporary file answers.
        if cmd not in ("write", "temp", "delete"):
            raise
        print(f"0x{e.getErrorCode():08x}")
    finally:
        conn.logoff()


if __name__ == "__main__":
    main()
