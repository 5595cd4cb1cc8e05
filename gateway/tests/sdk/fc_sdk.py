"""The Function Compute 3.0 SDK against the FC door (auth = "none").
Usage: fc_sdk.py ENDPOINT CA"""
import json

from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException

from common import args, b64, done, fc_client, fc_invoke, ok

endpoint, ca = args()
c = fc_client(endpoint, ca)

r = fc_invoke(c, "echo", b"hello from the FC SDK")
assert r.status_code == 200 and r.body.read() == b"hello from the FC SDK", r
assert r.headers["x-fc-request-id"] and r.headers["x-fc-instance-id"]
ok("Sync")

r = fc_invoke(c, "echo", b"{}", invocation_type="Async")
assert r.status_code == 202, r.status_code
ok("Async")

r = fc_invoke(c, "echo", b"fngate:print:from-fc-sdk", log_type="Tail")
log = b64(r.headers["x-fc-log-result"])
assert "from-fc-sdk\n" in log and log.startswith("FC Invoke Start RequestId: "), log
ok("Tail")

try:
    fc_invoke(c, "private", b"{}")
    raise AssertionError("a VPC-bound function must refuse the internet")
except ClientException as e:
    assert e.code == "AccessDenied" and e.status_code == 403, vars(e)
    assert "Resource access is bound by VPC" in e.message and e.request_id not in ("", "None")
ok("AccessDenied")

try:
    fc_invoke(c, "nope", b"{}")
    raise AssertionError("a missing function must raise")
except ClientException as e:
    assert e.code == "FunctionNotFound" and e.status_code == 404, vars(e)
ok("FunctionNotFound")

fc_invoke(c, "limited", b"{}")
try:
    fc_invoke(c, "limited", b"{}")
    raise AssertionError("the second call must be throttled")
except ThrottlingException as e:
    assert e.code == "ResourceThrottled" and e.status_code == 429 and e.retry_after > 0, vars(e)
ok("ThrottlingException")

r = fc_invoke(c, "echo", b"fngate:crash")
assert r.status_code == 200 and r.headers["x-fc-error-type"] == "UnhandledInvocationError"
assert "exited with code 3" in json.loads(r.body.read())["errorMessage"]
ok("UnhandledInvocationError")
done()
