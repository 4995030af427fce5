"""What smbpipeline.py and smbleave.py share: an impacket SMB 3.0 login,
and a file written and kept open, as a checkpoint writer leaves it just
before its flush or close.  Debian's python3-impacket (/usr/bin/python3)."""
from impacket import smb3structs as s3
from impacket.smbconnection import SMBConnection


def connect(port, user, password):
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=int(port),
                         preferredDialect=s3.SMB2_DIALECT_30, timeout=300)
    conn.login(user, password)
    return conn


def write_open(conn, tid, path, local):
    """PATH created (or emptied) with LOCAL's bytes, a MiB a write; its
    file id, still open."""
    fid = conn.createFile(tid, path, desiredAccess=s3.FILE_READ_DATA | s3.FILE_WRITE_DATA,
                          shareMode=s3.FILE_SHARE_READ,
                          creationDisposition=s3.FILE_OVERWRITE_IF)
    offset = 0
    with open(local, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            conn.writeFile(tid, fid, chunk, offset)
            offset += len(chunk)
    return fid
