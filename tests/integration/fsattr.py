#!/usr/bin/python3
"""fsattr: what a Windows client is told of a share's volume.

  fsattr.py PORT SHARE USER PASSWORD

Opens the share's root over SMB 3.0 with Debian's python3-impacket (run
with /usr/bin/python3; its 0.10 signs SMB 3.1.1 in a way Samba 4.17
refuses), asks QUERY_INFO for FileFsAttributeInformation as
Explorer does when it maps a drive, and prints the attribute flags in
hex, then the file system name.  Windows treats a volume whose flags hold
FILE_READ_ONLY_VOLUME (0x00080000) as read-only.
"""
import struct
import sys

from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection


def main():
    port, share, user, password = int(sys.argv[1]), *sys.argv[2:5]
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=port,
                         preferredDialect=s3.SMB2_DIALECT_30)
    conn.login(user, password)
    tid = conn.connectTree(share)
    fid = conn.openFile(tid, "", desiredAccess=s3.FILE_READ_ATTRIBUTES,
                        shareMode=s3.FILE_SHARE_READ | s3.FILE_SHARE_WRITE,
                        creationOption=s3.FILE_DIRECTORY_FILE,
                        creationDisposition=s3.FILE_OPEN)
    smb = conn.getSMBServer()
    blob = smb.queryInfo(tid, fid, infoType=s3.SMB2_0_INFO_FILESYSTEM,
                         fileInfoClass=s3.SMB2_FILESYSTEM_ATTRIBUTE_INFO)
    conn.closeFile(tid, fid)
    conn.logoff()
    # FileFsAttributeInformation: flags, max component length, name length, name.
    flags, maxlen, namelen = struct.unpack_from("<IiI", blob)
    name = blob[12:12 + namelen].decode("utf-16-le")
    print(f"0x{flags:08x} {name}")


if __name__ == "__main__":
    main()
