"""A local HTTPS server playing the clouds behind fngate's cloud backends.

It checks each call the way the cloud would, recomputing the signature with
the clouds' own SDK code (botocore's SigV4Auth for Lambda, the FC 3.0 SDK's
Utils.get_authorization for Function Compute), and answers in the cloud's
shapes, errors included. Loopback only.

    fake_cloud.py CERT KEY CONFIG_JSON

CONFIG_JSON: {"lambda_keys": {ak: secret}, "fc_keys": {ak: secret},
"azure_key": "...", "mode": "ok"}. Prints "listening PORT" when ready.

Routes:
- POST /2015-03-31/functions/{fn}/invocations   Lambda Invoke (SigV4)
- POST /2023-03-30/functions/{fn}/invocations   FC 3.0 InvokeFunction (ACS3)
- any  /api/{fn}                                Azure HTTP trigger (x-functions-key)
- any other path                                a plain HTTPS service
- POST /_fake/mode  body: ok | throttle | slow | fail   (answers 204)
- GET  /_fake/stats                             JSON counters

Modes: ok answers; throttle answers each cloud's throttling error; slow
reads the payload, then waits 5 s before answering; fail makes the
function fail (Lambda X-Amz-Function-Error, FC x-fc-error-type, HTTP 500).
A function named "fail" always fails.
"""
import datetime
import hashlib
import hmac
import json
import re
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from alibabacloud_tea_openapi.utils import Utils as FcUtils

CONFIG = json.loads(sys.argv[3])
LOCK = threading.Lock()
STATS = {"requests": 0, "verified": 0, "rejected": 0, "by_route": {}, "bytes_in": 0, "bytes_out": 0}
STATE = {"mode": CONFIG.get("mode", "ok")}

SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/lambda/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)
ACS3 = re.compile(r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([a-z0-9;-]+),Signature=([0-9a-f]{64})$")


def count(key, n=1):
    with LOCK:
        STATS[key] = STATS.get(key, 0) + n


def within_skew(when):
    return abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) <= 900


def verify_sigv4(handler, body):
    """None when the signature verifies, else (code, message)."""
    m = SIGV4.match(handler.headers.get("Authorization", ""))
    if not m:
        return ("MissingAuthenticationTokenException", "Missing Authentication Token")
    ak, day, region, signed, signature = m.groups()
    secret = CONFIG.get("lambda_keys", {}).get(ak)
    if secret is None:
        return ("UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = handler.headers.get("X-Amz-Date", "")
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if not within_skew(when) or amz_date[:8] != day:
        return ("InvalidSignatureException", "Signature expired")
    headers = {name: handler.headers.get(name, "") for name in signed.split(";")}
    url = "https://" + handler.headers["Host"] + handler.path
    req = AWSRequest(method=handler.command, url=url, data=body, headers=headers)
    req.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(ak, secret), "lambda", region)
    expected = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
    if not hmac.compare_digest(expected, signature):
        return ("InvalidSignatureException", "The request signature we calculated does not match the signature you provided.")
    return None


class FcRequest:
    pass


def verify_acs3(handler, body):
    m = ACS3.match(handler.headers.get("Authorization", ""))
    if not m:
        return ("MissingRequiredHeader", "required HTTP header Authorization was not specified")
    ak, signed, _ = m.groups()
    secret = CONFIG.get("fc_keys", {}).get(ak)
    if secret is None:
        return ("InvalidAccessKeyID", f"invalid access key ID '{ak}'")
    when = datetime.datetime.strptime(handler.headers.get("x-acs-date", ""), "%Y-%m-%dT%H:%M:%SZ")
    if not within_skew(when.replace(tzinfo=datetime.timezone.utc)):
        return ("SignatureNotMatch", "request time too skewed")
    if handler.headers.get("x-acs-content-sha256") != hashlib.sha256(body).hexdigest():
        return ("SignatureNotMatch", "the body does not match x-acs-content-sha256")
    split = urllib.parse.urlsplit(handler.path)
    req = FcRequest()
    req.method = handler.command
    req.pathname = split.path
    req.query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    req.headers = {name: handler.headers.get(name, "") for name in signed.split(";")}
    expected = FcUtils.get_authorization(req, "ACS3-HMAC-SHA256", hashlib.sha256(body).hexdigest(), ak, secret)
    if not hmac.compare_digest(expected, handler.headers["Authorization"]):
        return ("SignatureNotMatch", "The request signature we calculated does not match the signature you provided.")
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        count("bytes_out", len(body))

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        if self.path == "/_fake/stats":
            with LOCK:
                snapshot = json.dumps(dict(STATS, mode=STATE["mode"])).encode()
            return self.answer(200, snapshot, [("Content-Type", "application/json")])
        self.handle_any()

    def do_POST(self):
        if self.path == "/_fake/mode":
            STATE["mode"] = self.read_body().decode().strip()
            return self.answer(204)
        self.handle_any()

    do_PUT = do_GET
    do_DELETE = do_GET

    def handle_any(self):
        body = self.read_body()
        count("requests")
        count("bytes_in", len(body))
        path = urllib.parse.urlsplit(self.path).path
        mode = STATE["mode"]
        m = re.fullmatch(r"/(2015-03-31|2023-03-30)/functions/([^/]+)/invocations", path)
        route = "lambda" if m and m.group(1) == "2015-03-31" else "fc" if m else "azure" if path.startswith("/api/") else "http"
        with LOCK:
            STATS["by_route"][route] = STATS["by_route"].get(route, 0) + 1
        function = urllib.parse.unquote(m.group(2)) if m else path.rsplit("/", 1)[-1]
        if route == "lambda":
            bad = verify_sigv4(self, body)
            if bad:
                count("rejected")
                return self.answer(403, {"message": bad[1]}, [("x-amzn-ErrorType", bad[0] + ":http://internal.amazon.com/"), ("x-amzn-RequestId", "req-1")])
        elif route == "fc":
            bad = verify_acs3(self, body)
            if bad:
                count("rejected")
                return self.answer(403, {"Code": bad[0], "Message": bad[1], "RequestId": "req-1"}, [("Content-Type", "application/json")])
        elif route == "azure":
            if self.headers.get("x-functions-key") != CONFIG.get("azure_key"):
                count("rejected")
                return self.answer(401)
        count("verified")
        if mode == "throttle":
            if route == "lambda":
                return self.answer(429, {"Type": "User", "message": "Rate Exceeded.", "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"},
                                   [("x-amzn-ErrorType", "TooManyRequestsException"), ("Retry-After", "1")])
            if route == "fc":
                return self.answer(429, {"Code": "ResourceThrottled", "Message": "Reserve resource exceeded limit", "RequestId": "req-1"})
            return self.answer(429, {"error": "Too Busy"})
        if mode == "slow":
            time.sleep(5)
        result = {
            "cloud": route,
            "function": function,
            "qualifier": urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query),
            "method": self.command,
            "payload": body.decode(errors="replace"),
        }
        failing = mode == "fail" or function == "fail"
        if route == "lambda":
            headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", "req-1"), ("X-Amz-Executed-Version", "$LATEST")]
            if failing:
                return self.answer(200, {"errorMessage": "boom", "errorType": "Error"}, headers + [("X-Amz-Function-Error", "Unhandled")])
            return self.answer(200, result, headers)
        if route == "fc":
            headers = [("Content-Type", "application/json"), ("x-fc-request-id", "req-1")]
            if failing:
                return self.answer(200, {"errorMessage": "boom", "errorType": "Error"}, headers + [("x-fc-error-type", "UnhandledInvocationError")])
            return self.answer(200, result, headers)
        if failing:
            return self.answer(500, b"")
        return self.answer(200, result, [("Content-Type", "application/json"), ("X-Fake-Header", "kept")])


class Server(ThreadingHTTPServer):
    daemon_threads = True
    tls = None

    def finish_request(self, request, client_address):
        # The handshake runs in the connection's own thread: a client slow
        # to shake hands never holds up the others.
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        self.RequestHandlerClass(conn, client_address, self)


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    server = Server(("127.0.0.1", int(CONFIG.get("port", 0))), Handler)
    server.tls = ctx
    print("listening", server.server_address[1], file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
