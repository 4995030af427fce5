#!/usr/bin/python3
"""smblimits: how a share answers a file grown past its limits.

  smblimits.py PORT SHARE USER PASSWORD NAME SIZE...

Over SMB 3.0 with Debian's python3-impacket (run with /usr/bin/python3),
first asks FileFsFullSizeInformation as Explorer does before a copy and
prints "space TOTAL CALLER_AVAIL" in bytes.  Then creates NAME (overwrite)
and for each SIZE sets its end of file with SETINFO
FileEndOfFileInformation, as a client extending a file does, then writes
one byte at SIZE (past the end just set); it prints "eof SIZE STATUS" and
"write SIZE STATUS", STATUS being OK or the NT status name.  The file is
closed at the end.
"""
import struct
import sys

from impacket import nt_errors
from impacket import smb3
from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection, SessionError

FILE_END_OF_FILE_INFO = 20
FILE_FS_FULL_SIZE_INFO = 7


def status(fn):
    try:
        fn()
        return "OK"
    except (SessionError, smb3.SessionError) as e:
        code = e.getErrorCode() if hasattr(e, "getErrorCode") else e.get_error_code()
        return nt_errors.ERROR_MESSAGES.get(code, (hex(code),))[0]


def main():
    port, share, user, password, name = int(sys.argv[1]), *sys.argv[2:6]
    sizes = [int(x) for x in sys.argv[6:]]
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port,
                         preferredDialect=s3.SMB2_DIALECT_30)
    conn.login(user, password)
    tid = conn.connectTree(share)
    smb = conn.getSMBServer()

    root = conn.openFile(tid, "", desiredAccess=s3.FILE_READ_ATTRIBUTES,
                         shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE,
                         creationOption=s3.FILE_DIRECTORY_FILE,
                         creationDisposition=s3.FILE_OPEN)
    blob = smb.queryInfo(tid, root, infoType=s3.SMB2_0_INFO_FILESYSTEM,
                         fileInfoClass=FILE_FS_FULL_SIZE_INFO)
    conn.closeFile(tid, root)
    total, caller, _actual, per_unit, per_sector = struct.unpack_from(
        "<QQQII", blob)
    unit = per_unit * per_sector
    print(f"space {total * unit} {caller * unit}", flush=True)

    fid = conn.createFile(tid, name, desiredAccess=s3.FILE_READ_DATA |
                          s3.FILE_WRITE_DATA | s3.FILE_READ_ATTRIBUTES |
                          s3.FILE_WRITE_ATTRIBUTES,
                          shareMode=s3.FILE_SHARE_READ,
                          creationDisposition=s3.FILE_OVERWRITE_IF)
    for size in sizes:
        eof = status(lambda: smb.setInfo(
            tid, fid, inputBlob=struct.pack("<Q", size),
            infoType=s3.SMB2_0_INFO_FILE,
            fileInfoClass=FILE_END_OF_FILE_INFO))
        print(f"eof {size} {eof}", flush=True)
        wrote = status(lambda: conn.writeFile(tid, fid, b"x", offset=size))
        print(f"write {size} {wrote}", flush=True)
    conn.closeFile(tid, fid)
    conn.logoff()


if __name__ == "__main__":
    main()
