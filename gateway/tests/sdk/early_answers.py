"""Python's http.client (under requests and boto3) writes a whole body before
it reads the answer. A gateway that refuses a large body and closes at once
loses that answer for it (SSLEOFError / BrokenPipeError). This checks it gets
every answer, and that the connection carries on after each.
Usage: early_answers.py ENDPOINT CA  (standard library only)"""
import http.client
import json
import ssl
import sys

endpoint, ca = sys.argv[1], sys.argv[2]
host, port = endpoint.removeprefix("https://").split(":")
assert host.startswith("127."), host
conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=ca), timeout=60)
big = b"x" * (6 << 20)


def call(path, body):
    conn.request("POST", path, body=body)
    r = conn.getresponse()
    return r.status, r.getheaders(), r.read()


for path, want, code in [
    ("/2023-03-30/functions/small/invocations", 400, b"EntityTooLarge"),
    ("/2023-03-30/functions/private/invocations", 403, b"AccessDenied"),
    ("/2015-03-31/functions/small/invocations", 413, b"Request must be smaller"),
    ("/2015-03-31/functions/private/invocations", 403, b"Resource access is bound by VPC"),
    ("/api/private", 403, b"AccessDenied"),
]:
    status, _, body = call(path, big)
    assert status == want and code in body, (path, status, body[:200])
    print("ok:", path, status, flush=True)
    # The same connection serves the next call.
    status, _, body = call("/2023-03-30/functions/small/invocations", b"still here")
    assert status == 200 and body == b"still here", (status, body)
print("all ok", flush=True)
