"""boto3 against the Lambda door (auth = "none"): invocation types, log tail,
ARNs, errors in Lambda's shape.  Usage: lambda_boto3.py ENDPOINT CA"""
import json

from botocore.exceptions import ClientError

from common import args, b64, code_of, done, lambda_client, ok

endpoint, ca = args()
c = lambda_client(endpoint, ca)

r = c.invoke(FunctionName="echo", Payload=b'{"a":1}')
assert r["StatusCode"] == 200, r
assert r["Payload"].read() == b'{"a":1}'
assert "FunctionError" not in r and r["ExecutedVersion"] == "$LATEST"
assert len(r["ResponseMetadata"]["RequestId"]) == 37
ok("RequestResponse")

r = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"later":true}')
assert r["StatusCode"] == 202, r
ok("Event")

r = c.invoke(FunctionName="echo", InvocationType="DryRun")
assert r["StatusCode"] == 204, r
ok("DryRun")

r = c.invoke(FunctionName="echo", LogType="Tail", Payload=b"fngate:print:from-boto3")
log = b64(r["LogResult"])
rid = r["ResponseMetadata"]["RequestId"]
assert "from-boto3\n" in log and f"START RequestId: {rid}" in log and f"REPORT RequestId: {rid}" in log, log
ok("LogType=Tail")

for name in ["arn:aws:lambda:us-east-1:123456789012:function:echo",
             "arn:aws:lambda:eu-west-1:123456789012:function:echo:$LATEST",
             "123456789012:function:echo", "echo:live"]:
    r = c.invoke(FunctionName=name, Payload=b'"arn"')
    assert r["StatusCode"] == 200 and r["Payload"].read() == b'"arn"', name
r = c.invoke(FunctionName="echo", Qualifier="$LATEST", Payload=b'"q"')
assert r["Payload"].read() == b'"q"'
ok("FunctionName as ARN, partial ARN, name:qualifier; Qualifier")

try:
    c.invoke(FunctionName="private", Payload=b"{}")
    raise AssertionError("a VPC-bound function must refuse the internet")
except ClientError as e:
    assert code_of(e) == "AccessDeniedException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "Resource access is bound by VPC" in e.response["Error"]["Message"], e.response
ok("AccessDeniedException")

try:
    c.invoke(FunctionName="nope", Payload=b"{}")
    raise AssertionError("a missing function must raise")
except c.exceptions.ResourceNotFoundException as e:
    assert "function:nope" in e.response["Error"]["Message"], e.response
ok("ResourceNotFoundException")

c.invoke(FunctionName="limited", Payload=b"{}")
try:
    c.invoke(FunctionName="limited", Payload=b"{}")
    raise AssertionError("the second call must be throttled")
except c.exceptions.TooManyRequestsException as e:
    assert e.response["Reason"] == "ReservedFunctionInvocationRateLimitExceeded", e.response
    assert int(e.response["retryAfterSeconds"]) >= 1, e.response
    assert int(e.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-retry-after"]) > 0
ok("TooManyRequestsException with its Reason")

r = c.invoke(FunctionName="echo", Payload=b"fngate:crash")
assert r["StatusCode"] == 200 and r["FunctionError"] == "Unhandled", r
body = json.loads(r["Payload"].read())
assert body["errorType"] == "Runtime.ExitError" and "exited with code 3" in body["errorMessage"], body
ok("FunctionError")

try:
    c.invoke(FunctionName="echo", ClientContext="not base64!", Payload=b"{}")
    raise AssertionError("a bad client context must be refused")
except c.exceptions.InvalidRequestContentException:
    pass
ok("InvalidRequestContentException")
done()
