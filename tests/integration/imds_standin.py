#!/usr/bin/env python3
"""A loopback stand-in for the EC2 instance metadata service (IMDSv2).

    imds_standin.py PORT --keys AK1:SK1,AK2:SK2 [--lifetime SECONDS]

PUT /latest/api/token (with X-aws-ec2-metadata-token-ttl-seconds) gives a
session token; with it, GET /latest/meta-data/iam/security-credentials/
names the role and GET .../security-credentials/ROLE answers the role's
credentials as EC2 does (JSON: AccessKeyId, SecretAccessKey, Token,
Expiration).  Each credentials request hands out the next key pair of
--keys (the last one repeats), expiring --lifetime seconds later, so a test
can see a refresh.  Requests without a valid token get 401, as IMDSv2
does.  One line per request on stdout.
"""
import argparse
import datetime
import http.server
import json
import secrets
import threading

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("--keys", required=True)
ap.add_argument("--lifetime", type=int, default=21600)
args = ap.parse_args()
KEYS = [k.split(":", 1) for k in args.keys.split(",")]
ROLE = "bucketfs-test-role"
tokens = set()
issued = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def answer(self, status, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        print(f"PUT {self.path}", flush=True)
        if self.path != "/latest/api/token" or \
                not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.answer(400, "bad request")
        token = secrets.token_hex(16)
        with lock:
            tokens.add(token)
        self.answer(200, token)

    def do_GET(self):
        global issued
        base = "/latest/meta-data/iam/security-credentials/"
        with lock:
            ok = self.headers.get("X-aws-ec2-metadata-token") in tokens
        if not ok:
            print(f"GET {self.path} 401", flush=True)
            return self.answer(401, "")
        if self.path == base:
            print(f"GET {self.path}", flush=True)
            return self.answer(200, ROLE)
        if self.path != base + ROLE:
            return self.answer(404, "")
        with lock:
            ak, sk = KEYS[min(issued, len(KEYS) - 1)]
            issued += 1
        expires = datetime.datetime.now(datetime.timezone.utc) + \
            datetime.timedelta(seconds=args.lifetime)
        print(f"GET {self.path} issued {ak}", flush=True)
        self.answer(200, json.dumps({
            "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": ak,
            "SecretAccessKey": sk, "Token": "session-" + ak,
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "LastUpdated": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ"),
        }), "application/json")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
