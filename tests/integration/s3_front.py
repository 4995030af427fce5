#!/usr/bin/env python3
"""The front door of the test S3 server: what s3rver 3.7.1 leaves out.

s3rver stores and serves objects, but it does not verify SigV4 signatures
(any secret passes) and ignores If-Match on GET.  This loopback front checks
both the way S3 does, with its own SigV4 implementation (independent of the
C one under test), then forwards to s3rver.  It can also inject faults.

    s3_front.py LISTEN UPSTREAM [--keys AK:SK,...] [--fault MODE --count N]

A completed multipart upload is gone (NoSuchUpload), as on S3.
Conditional PUTs (If-None-Match: *, If-Match) are checked and done under
one lock, as S3 does them (s3rver ignores both).
s3rver has no UploadPartCopy either: the front does it the way S3 does,
from s3rver's own primitives (a range GET of the source, an UploadPart of
those bytes), and answers a CopyPartResult.

MODE: 503 (SlowDown document), 500 (InternalError), truncate (full
Content-Length promised, half sent, connection closed), reset (connection
closed before any answer), midreset (half the body, then a TCP reset),
short (a Content-Length that lies: half the body, said to be all of it,
the connection kept), flip (one byte of the body changed).  The first N
requests get the fault.
With --control FILE, a test switches faults while it runs: FILE holds
"METHOD MODE COUNT [PATHPART]" (COUNT -1: every request; PATHPART: only
requests whose path and query hold it), MODE one of the above or
deny (403 AccessDenied) or stale (a GET's If-Match is not checked: the
current object is answered, as s3rver alone or a careless proxy does) or
delay:SECONDS or body:FILE (200 with FILE's
bytes as the answer) or lost (the request is done upstream, then the
connection closed with no answer); the next COUNT requests of that
method get it, counted from when the file's content changed.
One line per request goes to stdout.

With --aws BEHAVIOURS (comma-separated), it behaves as AWS S3 does where
s3rver does not:
  kms             every ETag (headers, listings, upload answers) is opaque,
                  as on an SSE-KMS bucket: 32 hex digits that are not the
                  MD5 of the bytes; x-amz-server-side-encryption: aws:kms
  checksums       a GET with x-amz-checksum-mode: ENABLED of a whole object
                  carries x-amz-checksum-crc64nvme, -crc32c or -sha256 (by
                  key), computed before any injected fault changes a byte;
                  an upload's x-amz-checksum-crc32c is checked (BadDigest);
                  a multipart upload created with x-amz-checksum-algorithm
                  wants it on every part and in every part of the completion
  nochecksums     any x-amz-checksum-* header is refused (400 InvalidRequest),
                  as servers that do not know them may
  public          unsigned GET and HEAD are served (a public bucket);
                  anything else unsigned is AccessDenied
  requester-pays  a request without x-amz-request-payer: requester is
                  AccessDenied
  slowdown=N      more than N requests in one second to one key prefix
                  (the key up to its last '/') are answered 503 SlowDown,
                  as S3 does while it scales a prefix out
  100-continue    a request that says Expect: 100-continue and would be
                  refused gets its refusal before it sends the body, as S3
                  answers; the log shows each request's Expect header
  region=R        the bucket is in region R: a request signed for another
                  region is 400 AuthorizationHeaderMalformed naming R (in
                  the document and in x-amz-bucket-region), as AWS answers
  redirect=R      the same, as AWS answers at another region's endpoint:
                  301 PermanentRedirect with x-amz-bucket-region (a HEAD
                  has no document)
"""
import argparse
import hashlib
import hmac
import http.client
import http.server
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("listen", type=int)
ap.add_argument("upstream", type=int)
ap.add_argument("--keys", default="S3RVER:S3RVER")
ap.add_argument("--fault", default="")
ap.add_argument("--count", type=int, default=0)
ap.add_argument("--control", default="")
ap.add_argument("--aws", default="")
# Before a server that does S3's part itself (Ceph RGW): hand every request
# on as it came (it checks the signature again), and do not stand in for
# If-Match, UploadPartCopy or NoSuchUpload as the front does for s3rver.
ap.add_argument("--transparent", action="store_true")
# Another address than loopback (the cluster's bridge, tests/cluster.py).
ap.add_argument("--bind", default="127.0.0.1")
args = ap.parse_args()
AWS = set(b for b in args.aws.split(",") if b and "=" not in b)
REGION = next((b[7:] for b in args.aws.split(",") if b.startswith("region=")), None)
REDIRECT = next((b[9:] for b in args.aws.split(",") if b.startswith("redirect=")), None)
SLOWDOWN = next((int(b[9:]) for b in args.aws.split(",") if b.startswith("slowdown=")), 0)
prefix_rate = {}  # key prefix -> (second, requests in it)
SECRETS = dict(kv.split(":", 1) for kv in args.keys.split(","))
lock = threading.Lock()
seen = 0

AUTH_RE = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request,"
                     r"\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]{64})$")


def s3_quote(s):
    return urllib.parse.quote(s, safe="-_.~")


def canonical_query(raw):
    pairs = []
    for part in raw.split("&") if raw else []:
        name, _, value = part.partition("=")
        pairs.append((s3_quote(urllib.parse.unquote(name)),
                      s3_quote(urllib.parse.unquote(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def expected_signature(secret, method, path, query, headers, signed, date, region, payload_hash):
    canon_headers = "".join(
        f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed.split(";"))
    creq = "\n".join([method, path, canonical_query(query), canon_headers, signed, payload_hash])
    amz_date = headers.get("x-amz-date", "")
    scope = f"{date}/{region}/s3/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()


def crc_table(poly, width):
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table, (1 << width) - 1


CRC32C = crc_table(0x82F63B78, 32)
CRC64NVME = crc_table(0x9A6C9329AC4BC9B5, 64)


def crc(spec, data):
    table, mask = spec
    c = mask
    for b in data:
        c = (c >> 8) ^ table[(c ^ b) & 0xFF]
    return c ^ mask


def checksum_header(key, data):
    """(header, value) of one of S3's additional checksums, picked by key."""
    import base64
    pick = hashlib.md5(key.encode()).digest()[0] % 3
    if pick == 0:
        return "x-amz-checksum-crc64nvme", base64.b64encode(crc(CRC64NVME, data).to_bytes(8, "big")).decode()
    if pick == 1:
        return "x-amz-checksum-crc32c", base64.b64encode(crc(CRC32C, data).to_bytes(4, "big")).decode()
    return "x-amz-checksum-sha256", base64.b64encode(hashlib.sha256(data).digest()).decode()


def kms_etag(etag):
    """The opaque ETag an SSE-KMS bucket shows for s3rver's (quotes kept)."""
    bare = etag.strip('"')
    hexpart, dash, parts = bare.partition("-")
    fake = hashlib.md5(b"kms:" + hexpart.encode()).hexdigest()
    return ('"' if etag.startswith('"') else "") + fake + dash + parts + \
        ('"' if etag.endswith('"') else "")


def kms_xml(data):
    """ETag elements of an XML answer (listing, upload result) made opaque."""
    return re.sub(rb"<ETag>(&quot;|\")?([0-9a-fA-F]{32}(?:-\d+)?)(&quot;|\")?</ETag>",
                  lambda m: b"<ETag>" + (m.group(1) or b"") +
                  kms_etag(m.group(2).decode()).encode() + (m.group(3) or b"") + b"</ETag>",
                  data)


def too_fast(path):
    """Whether this request passes SLOWDOWN requests a second on its prefix."""
    key = urllib.parse.unquote(path.split("?")[0]).lstrip("/").partition("/")[2]
    prefix = key.rpartition("/")[0]
    now = int(time.monotonic())
    with lock:
        second, n = prefix_rate.get(prefix, (now, 0))
        n = n + 1 if second == now else 1
        prefix_rate[prefix] = (now, n)
    return n > SLOWDOWN


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_expect_100(self):
        # S3 answers a request it refuses before the body comes.
        if "100-continue" in AWS and "Authorization" not in self.headers:
            self.error(403, "AccessDenied", "Access Denied")
            self.close_connection = True
            return False
        return super().handle_expect_100()

    def log_message(self, *a):
        pass

    def error(self, status, code, message, region=None):
        extra = f"<Region>{region}</Region>" if region else ""
        doc = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
               f"<Message>{message}</Message>{extra}<RequestId>FRONT{seen}</RequestId></Error>").encode()
        self.send_response(status)
        if region:
            self.send_header("x-amz-bucket-region", region)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(doc)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(doc)

    def verify(self, body):
        headers = {k.lower(): v for k, v in self.headers.items()}
        m = AUTH_RE.match(headers.get("authorization", ""))
        if not m:
            return 403, "AccessDenied", "Missing or malformed Authorization"
        access, date, region, signed, sig = m.groups()
        if access not in SECRETS:
            return 403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"
        payload_hash = headers.get("x-amz-content-sha256")
        if payload_hash is None:
            return 400, "InvalidRequest", "Missing required header x-amz-content-sha256"
        if payload_hash != "UNSIGNED-PAYLOAD" and payload_hash != hashlib.sha256(body or b"").hexdigest():
            return 400, "XAmzContentSHA256Mismatch", "The provided x-amz-content-sha256 does not match"
        path, _, query = self.path.partition("?")
        want = expected_signature(SECRETS[access], self.command, path, query, headers,
                                  signed, date, region, payload_hash)
        if not hmac.compare_digest(want, sig):
            return 403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided"
        return None

    def check_upload_checksums(self, body):
        """What AWS says of an upload's additional checksums (or None)."""
        import base64
        sent = {k.lower(): v for k, v in self.headers.items()
                if k.lower().startswith("x-amz-checksum-") and k.lower() != "x-amz-checksum-mode"}
        if "nochecksums" in AWS and sent:
            return 400, "InvalidRequest", f"{sorted(sent)[0]}: checksums are not supported here"
        if "checksums" not in AWS:
            return None
        upload = re.search(r"[?&]uploadId=([^&]+)", self.path)
        upload_id = urllib.parse.unquote(upload.group(1)) if upload else None
        if "x-amz-checksum-crc32c" in sent:
            want = base64.b64encode(crc(CRC32C, body or b"").to_bytes(4, "big")).decode()
            if sent["x-amz-checksum-crc32c"] != want:
                return 400, "BadDigest", "The CRC32C you specified did not match the calculated checksum."
        if upload_id in crc_uploads:
            if self.command == "PUT" and "x-amz-checksum-crc32c" not in sent:
                return 400, "InvalidRequest", "The upload was created using a crc32c checksum. " \
                    "The part request must include a checksum."
            if self.command == "POST":
                parts = re.findall(rb"<Part>(.*?)</Part>", body or b"")
                if not parts or any(b"<ChecksumCRC32C>" not in p for p in parts):
                    return 400, "InvalidPart", "One or more of the specified parts could not " \
                        "be found: the part's checksum is missing"
        return None

    def upstream(self, method, body, headers, path=None):
        conn = http.client.HTTPConnection("127.0.0.1", args.upstream, timeout=60)
        conn.request(method, path or self.path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp, resp.read()

    def upload_part_copy(self, headers):
        src = urllib.parse.unquote(self.headers["x-amz-copy-source"])
        src = "/" + src.lstrip("/")
        plain = {k: v for k, v in headers.items()
                 if not k.lower().startswith("x-amz-copy-source") and k.lower() != "content-length"}
        rng = self.headers.get("x-amz-copy-source-range")
        get_headers = dict(plain, Range=rng) if rng else plain
        resp, data = self.upstream("GET", None, get_headers, path=urllib.parse.quote(src))
        if resp.status not in (200, 206):
            return self.error(resp.status, "NoSuchKey" if resp.status == 404 else "InternalError",
                              "copy source unreadable")
        resp, _ = self.upstream("PUT", data, dict(plain, **{"Content-Length": str(len(data))}))
        if resp.status != 200:
            return self.error(resp.status, "InternalError", "part upload failed")
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><CopyPartResult>"
                f"<ETag>{resp.getheader('ETag')}</ETag>"
                "<LastModified>2026-01-01T00:00:00.000Z</LastModified></CopyPartResult>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_one(self):
        global seen
        self.want_etag = None  # one handler serves a connection's requests
        with lock:
            seen += 1
            n = seen
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = args.fault if n <= args.count else ""
        if args.control:
            fault = controlled_fault(self.command, self.path) or fault
        ak = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        log_line(f"{self.command} {self.path} fault={fault or '-'} if-match={self.headers.get('If-Match')} range={self.headers.get('Range')} ak={ak.group(1) if ak else '-'} cksum={self.headers.get('x-amz-checksum-mode') or '-'} crc32c={self.headers.get('x-amz-checksum-crc32c') or self.headers.get('x-amz-checksum-algorithm') or '-'} expect={self.headers.get('Expect') or '-'} copy={'yes' if self.headers.get('x-amz-copy-source') else '-'} from={self.client_address[0]}")
        if fault.startswith("delay:"):
            time.sleep(float(fault[6:]))
            fault = ""
        if fault.startswith("body:"):
            # A canned answer (a hostile listing, say) instead of s3rver's.
            with open(fault[5:], "rb") as f:
                doc = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            self.wfile.write(doc)
            return
        if fault == "deny":
            return self.error(403, "AccessDenied", "Access Denied (injected)")
        if fault in ("503", "500"):
            return self.error(int(fault), "SlowDown" if fault == "503" else "InternalError", "injected")
        if fault == "reset":
            self.close_connection = True
            return
        if SLOWDOWN and self.path.split("?")[0].count("/") >= 2 and too_fast(self.path):
            return self.error(503, "SlowDown", "Please reduce your request rate.")
        if "requester-pays" in AWS and self.headers.get("x-amz-request-payer") != "requester":
            return self.error(403, "AccessDenied", "Access Denied")
        signed = "Authorization" in self.headers
        if not signed and not ("public" in AWS and self.command in ("GET", "HEAD")):
            return self.error(403, "AccessDenied", "Access Denied")
        m = AUTH_RE.match(self.headers.get("Authorization", ""))
        if REDIRECT and m and m.group(3) != REDIRECT:
            return self.error(301, "PermanentRedirect",
                              "The bucket you are attempting to access must be addressed "
                              "using the specified endpoint.", region=REDIRECT)
        if REGION and m and m.group(3) != REGION:
            return self.error(400, "AuthorizationHeaderMalformed",
                              f"The authorization header is malformed; the region "
                              f"'{m.group(3)}' is wrong; expecting '{REGION}'", region=REGION)
        bad = self.verify(body) if signed else None
        if bad:
            return self.error(*bad)
        bad = self.check_upload_checksums(body)
        if bad:
            return self.error(*bad)
        if args.transparent:
            return self.forward(body, fault)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "if-match"}
        # s3rver knows one access key (S3RVER) and checks no signature: the
        # key we verified is handed on as that one.
        if "Authorization" in headers:
            headers["Authorization"] = re.sub(r"Credential=[^/]+/", "Credential=S3RVER/",
                                              headers["Authorization"])
        copy_if = self.headers.get("x-amz-copy-source-if-match")
        if self.command == "PUT" and "x-amz-copy-source" in self.headers and copy_if:
            # A copy of one version of its source (S3 checks it; s3rver
            # and RGW 16.2 ignore the header).
            src = "/" + urllib.parse.unquote(self.headers["x-amz-copy-source"]).lstrip("/")
            plain = {k: v for k, v in headers.items()
                     if not k.lower().startswith("x-amz-copy-source")
                     and k.lower() != "content-length"}
            head, _ = self.upstream("HEAD", None, plain, path=urllib.parse.quote(src))
            if head.status == 404:
                return self.error(404, "NoSuchKey", "The specified key does not exist.")
            if head.status == 200 and (head.getheader("ETag") or "").strip('"') != copy_if.strip('"'):
                return self.error(412, "PreconditionFailed",
                                  "At least one of the pre-conditions you specified did not hold")
            headers = {k: v for k, v in headers.items()
                       if k.lower() != "x-amz-copy-source-if-match"}
        if (self.command == "PUT" and "x-amz-copy-source" in self.headers
                and "partNumber=" in self.path):
            return self.upload_part_copy(headers)
        if_match = self.headers.get("If-Match")
        if_none = self.headers.get("If-None-Match")
        if self.command == "PUT" and (if_match or if_none) and "partNumber=" not in self.path:
            # Conditional writes (S3's since 2024), which s3rver lacks: the
            # check and the write under one lock, as atomic as S3's.
            with cond_lock:
                plain = {k: v for k, v in headers.items()
                         if k.lower() not in ("if-none-match", "content-length")}
                head, _ = self.upstream("HEAD", None, plain)
                have = (head.getheader("ETag") or "").strip('"') if head.status == 200 else None
                if if_match is not None and have is None:
                    return self.error(404, "NoSuchKey", "The specified key does not exist.")
                if ((if_none == "*" and have is not None)
                        or (if_match is not None and have != if_match.strip('"'))):
                    return self.error(412, "PreconditionFailed",
                                      "At least one of the pre-conditions you specified did not hold")
                return self.forward(body, fault, {k: v for k, v in headers.items()
                                                  if k.lower() != "if-none-match"}, None)
        if if_match is not None and self.command == "GET" and fault != "stale":
            plain = {k: v for k, v in headers.items() if k.lower() != "range"}
            head, _ = self.upstream("HEAD", None, plain)
            have = head.getheader("ETag")
            if "kms" in AWS and have:
                have = kms_etag(have)
            if head.status in (200, 206) and have != if_match:
                return self.error(412, "PreconditionFailed",
                                  "At least one of the pre-conditions you specified did not hold")
            # The object may change between that HEAD and the GET: the GET's
            # own ETag is checked again in forward, so that the pair is as
            # atomic as S3's check.
            self.want_etag = if_match
        # s3rver answers InternalError for an upload it has completed;
        # S3 answers NoSuchUpload, as the front does.
        upload = re.search(r"[?&]uploadId=([^&]+)", self.path)
        if upload and self.command in ("POST", "PUT") and upload.group(1) in completed_uploads:
            return self.error(404, "NoSuchUpload", "The specified upload does not exist.")
        self.forward(body, fault, headers, upload)

    def forward(self, body, fault, headers=None, upload=None):
        """Hand the request on upstream and its answer back (faults applied)."""
        if headers is None:
            headers = dict(self.headers.items())
        resp, data = self.upstream(self.command, body, headers)
        want = self.want_etag
        if want is not None and resp.status in (200, 206):
            have = resp.getheader("ETag")
            if "kms" in AWS and have:
                have = kms_etag(have)
            if have != want:
                return self.error(412, "PreconditionFailed",
                                  "At least one of the pre-conditions you specified did not hold")
        if upload and self.command == "POST" and resp.status == 200:
            with lock:
                completed_uploads.add(upload.group(1))
        if ("checksums" in AWS and self.command == "POST" and "uploads" in self.path.split("?", 1)[-1]
                and self.headers.get("x-amz-checksum-algorithm", "").upper() == "CRC32C"):
            created = re.search(rb"<UploadId>([^<]+)</UploadId>", data or b"")
            if created:
                with lock:
                    crc_uploads.add(created.group(1).decode())
        if fault == "lost":
            self.close_connection = True
            return
        if fault.startswith("late:"):
            # S3 answered at once; the answer arrives S seconds later (a
            # slow listing: what it says is older than when it lands).
            time.sleep(float(fault[5:]))
        extra = []
        if "kms" in AWS:
            if resp.getheader("ETag"):
                extra.append(("ETag", kms_etag(resp.getheader("ETag"))))
            if self.command in ("GET", "HEAD", "PUT"):
                extra.append(("x-amz-server-side-encryption", "aws:kms"))
            if data and resp.getheader("Content-Type", "").endswith("xml"):
                data = kms_xml(data)
        rng = resp.getheader("Content-Range") or ""
        whole = resp.status == 200 or re.fullmatch(r"bytes 0-(\d+)/(\d+)", rng) and \
            int(rng.split("-")[1].split("/")[0]) + 1 == int(rng.split("/")[1])
        if ("checksums" in AWS and self.command == "GET" and whole and
                self.headers.get("x-amz-checksum-mode") == "ENABLED" and
                not self.path.split("?")[0].endswith("/")):
            extra.append(checksum_header(self.path.split("?")[0], data))
            extra.append(("x-amz-checksum-type", "FULL_OBJECT"))
        if fault == "flip" and data:
            data = bytearray(data)
            data[len(data) // 2] ^= 0x20
            data = bytes(data)
        if fault == "short" and self.command != "HEAD":
            data = data[: len(data) // 2]
        self.send_response(resp.status)
        replaced = {k.lower() for k, _ in extra}
        for k, v in resp.getheaders():
            if k.lower() not in {"transfer-encoding", "connection", "content-length"} | replaced:
                self.send_header(k, v)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault in ("truncate", "midreset"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault == "midreset":
                # SO_LINGER 0: close() sends RST, not FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                # Now, before the server's own shutdown sends a FIN.
                self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one


def log_line(text):
    # One write per line: threads must not interleave within a line.
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


control_seen = None
control_left = 0
cond_lock = threading.Lock()  # conditional PUTs, one at a time
completed_uploads = set()
crc_uploads = set()  # created with x-amz-checksum-algorithm: CRC32C


def controlled_fault(method, path):
    global control_seen, control_left
    try:
        with open(args.control) as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = ""
    with lock:
        if text != control_seen:
            control_seen = text
            control_left = int(text.split()[2]) if len(text.split()) in (3, 4) else 0
        parts = text.split()
        if (len(parts) not in (3, 4) or parts[0] != method or control_left == 0
                or (len(parts) == 4 and parts[3] not in path)):
            return ""
        if control_left > 0:
            control_left -= 1
        return parts[1]


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


Server((args.bind, args.listen), Front).serve_forever()
