"""Both SDKs against a gateway with auth = "signature" and caller_key =
"access_key": signed calls pass at the FC and Lambda doors; a wrong secret,
an unknown key, a tampered body, a stale date and an unsigned call each fail
with the cloud's own code; each verified key has its own rate budget, which
an FC call (whose head proves its key) meets before its body is read.
Usage: signed.py ENDPOINT CA"""
import datetime
import http.client
import ssl

import botocore.auth
from botocore.exceptions import ClientError
import alibabacloud_tea_openapi.client as openapi_client
import alibabacloud_tea_openapi.utils as openapi_utils
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException

from common import args, code_of, done, fc_client, fc_invoke, lambda_client, ok

endpoint, ca = args()
ALPHA = ("AKIDALPHA", "alpha-secret")
BETA = ("LTAIBETA", "beta-secret")


def lambda_fails(client, code, status=403, function="echo", **kw):
    try:
        client.invoke(FunctionName=function, Payload=b'{"a":1}', **kw)
    except ClientError as e:
        assert code_of(e) == code, e.response
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == status, e.response
        return e
    raise AssertionError(f"expected {code}")


def fc_fails(client, code, status=403, function="echo"):
    try:
        fc_invoke(client, function, b'{"a":1}')
    except AlibabaCloudException as e:
        assert e.code == code and e.status_code == status, vars(e)
        return e
    raise AssertionError(f"expected {code}")


# ---- the Lambda door: SigV4 ----
good = lambda_client(endpoint, ca, *ALPHA)
r = good.invoke(FunctionName="echo", Payload=b'{"a":1}')
assert r["StatusCode"] == 200 and r["Payload"].read() == b'{"a":1}'
r = good.invoke(FunctionName="arn:aws:lambda:us-east-1:123456789012:function:echo", Payload=b"{}")
assert r["StatusCode"] == 200
ok("signed Lambda calls (name and percent-encoded ARN)")

lambda_fails(lambda_client(endpoint, ca, ALPHA[0], "wrong-secret"), "InvalidSignatureException")
ok("Lambda: wrong secret")
lambda_fails(lambda_client(endpoint, ca, "AKIDUNKNOWN", "x"), "UnrecognizedClientException")
ok("Lambda: unknown key id")

tamper = lambda_client(endpoint, ca, *ALPHA)


def tamper_body(request, **kw):
    # After signing: same length, other bytes.
    request.body = b'{"a":2}'


tamper.meta.events.register_last("before-send", tamper_body)
lambda_fails(tamper, "InvalidSignatureException")
ok("Lambda: tampered body")

real_now = botocore.auth.get_current_datetime
botocore.auth.get_current_datetime = lambda: real_now() - datetime.timedelta(minutes=20)
try:
    e = lambda_fails(lambda_client(endpoint, ca, *ALPHA), "InvalidSignatureException")
    assert "expired" in e.response["Error"]["Message"], e.response
finally:
    botocore.auth.get_current_datetime = real_now
ok("Lambda: stale X-Amz-Date")

lambda_fails(lambda_client(endpoint, ca, unsigned=True), "MissingAuthenticationTokenException")
ok("Lambda: unsigned")

# An unknown function is named only to a verified caller.
lambda_fails(lambda_client(endpoint, ca, unsigned=True), "MissingAuthenticationTokenException", function="nope")
try:
    good.invoke(FunctionName="nope", Payload=b"{}")
    raise AssertionError("expected ResourceNotFoundException")
except good.exceptions.ResourceNotFoundException:
    pass
ok("Lambda: unknown function, signed and unsigned")

# ---- the FC door: ACS3-HMAC-SHA256 ----
fc_good = fc_client(endpoint, ca, *BETA)
r = fc_invoke(fc_good, "echo", b"signed by the FC SDK")
assert r.status_code == 200 and r.body.read() == b"signed by the FC SDK"
ok("signed FC call")

fc_fails(fc_client(endpoint, ca, BETA[0], "wrong-secret"), "SignatureNotMatch")
ok("FC: wrong secret")

# The task API is signed like invocations (a GET with a query string).
from alibabacloud_fc20230330 import models as fc_models
listed = fc_good.list_async_tasks("echo", fc_models.ListAsyncTasksRequest(status="Succeeded", limit=5))
assert listed.status_code == 200, listed
try:
    fc_client(endpoint, ca, BETA[0], "wrong-secret").list_async_tasks(
        "echo", fc_models.ListAsyncTasksRequest(status="Succeeded", limit=5))
    raise AssertionError("a wrong secret must fail at the task API too")
except AlibabaCloudException as e:
    assert e.code == "SignatureNotMatch" and e.status_code == 403, vars(e)
ok("FC: the task API, signed")
fc_fails(fc_client(endpoint, ca, "LTAIUNKNOWN", "x"), "InvalidAccessKeyID")
ok("FC: unknown key id")

real_do_action = openapi_client.DaraCore.do_action


def tampered(request, runtime, *a, **kw):
    request.body = b'{"a":"tampered"}'
    return real_do_action(request, runtime, *a, **kw)


openapi_client.DaraCore.do_action = staticmethod(tampered)
try:
    e = fc_fails(fc_client(endpoint, ca, *BETA), "SignatureNotMatch")
    assert "x-acs-content-sha256" in e.message, vars(e)
finally:
    openapi_client.DaraCore.do_action = real_do_action
ok("FC: tampered body")

real_timestamp = openapi_utils.Utils.get_timestamp
stale = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
openapi_utils.Utils.get_timestamp = staticmethod(lambda: stale)
try:
    e = fc_fails(fc_client(endpoint, ca, *BETA), "SignatureNotMatch")
    assert "x-acs-date" in e.message, vars(e)
finally:
    openapi_utils.Utils.get_timestamp = real_timestamp
ok("FC: stale x-acs-date")

host = endpoint.removeprefix("https://")
conn = http.client.HTTPSConnection(host.split(":")[0], int(host.split(":")[1]),
                                   context=ssl.create_default_context(cafile=ca))
conn.request("POST", "/2023-03-30/functions/echo/invocations", body=b"unsigned")
resp = conn.getresponse()
body = resp.read()
assert resp.status == 400 and b"MissingRequiredHeader" in body, (resp.status, body)
ok("FC: unsigned")

# ---- one budget per verified key (caller_key = "access_key") ----
r = good.invoke(FunctionName="percaller", Payload=b"{}")
assert r["StatusCode"] == 200
lambda_fails(good, "TooManyRequestsException", status=429, function="percaller")
# The same key through the other door shares that budget...
fc_alpha = fc_client(endpoint, ca, *ALPHA)
fc_fails(fc_alpha, "ResourceThrottled", status=429, function="percaller")
# ... and another key has its own, from the same address.
r = fc_invoke(fc_good, "percaller", b"{}")
assert r.status_code == 200
ok("caller_key = access_key")

# An FC signature covers the hash it declares, so its head proves the key:
# past the key's budget, even a body that does not match that hash is refused
# from the head, throttled, before a byte of it is read or hashed.
openapi_client.DaraCore.do_action = staticmethod(tampered)
try:
    fc_fails(fc_client(endpoint, ca, *BETA), "ResourceThrottled", status=429, function="percaller")
finally:
    openapi_client.DaraCore.do_action = real_do_action
ok("FC: a key proven by the head meets its limit before the body")
done()
