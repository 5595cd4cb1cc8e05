"""The clouds' clients calling cloud-backed functions through fngate: boto3
at the Lambda door and the FC 3.0 SDK at the FC door reach functions that
run in (fake) Lambda, FC and Azure; the fake cloud verified the gateway's
own signatures. Usage: backends_sdk.py ENDPOINT CA"""
import json

from alibabacloud_tea_openapi.exceptions import ServerException
from botocore.exceptions import ClientError

from common import args, code_of, done, fc_client, fc_invoke, lambda_client, ok

endpoint, ca = args()
lam = lambda_client(endpoint, ca)
fc = fc_client(endpoint, ca)

for function, cloud in [("lam", "lambda"), ("ali", "fc"), ("az", "azure")]:
    payload = json.dumps({"sdk": "boto3", "to": function})
    r = lam.invoke(FunctionName=function, Payload=payload.encode())
    body = json.loads(r["Payload"].read())
    assert r["StatusCode"] == 200 and "FunctionError" not in r, r
    assert body["cloud"] == cloud and body["payload"] == payload, body
    r = fc_invoke(fc, function, b"from the FC SDK")
    body = json.loads(r.body.read())
    assert r.status_code == 200 and body["cloud"] == cloud and body["payload"] == "from the FC SDK", body
    ok(f"{function} ({cloud}) through the Lambda and FC doors")

r = lam.invoke(FunctionName="lam-fail", Payload=b"{}")
assert r["FunctionError"] == "Unhandled", r
assert json.loads(r["Payload"].read())["errorMessage"] == "boom"
ok("a cloud function's failure is a FunctionError")

try:
    lam.invoke(FunctionName="lam-bad", Payload=b"{}")
    raise AssertionError("a backend refusing the gateway's signature must fail")
except ClientError as e:
    assert code_of(e) == "BadGatewayException" and e.response["ResponseMetadata"]["HTTPStatusCode"] == 502, e.response
    assert "InvalidSignatureException" in e.response["Error"]["Message"], e.response
ok("BadGatewayException")

try:
    fc_invoke(fc, "lam-bad", b"{}")
    raise AssertionError("a backend refusing the gateway's signature must fail")
except ServerException as e:
    assert e.code == "BadResponse" and e.status_code == 502 and "'aws'" in e.message, vars(e)
ok("BadResponse")
done()
