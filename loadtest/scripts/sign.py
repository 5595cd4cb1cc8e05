"""Signs one invocation with a cloud's real SDK and prints the headers it
would send (`Name: value` per line; Host left out: the load generator sends
the same one), for `loadtest --header`. Valid for the signature window (15
minutes). Usage: sign.py lambda|fc ENDPOINT FUNCTION BODY KEY SECRET"""
import sys

door, endpoint, function, body, key, secret = sys.argv[1:]
assert endpoint.startswith("https://127."), endpoint
body = body.encode()

if door == "lambda":
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=f"{endpoint}/2015-03-31/functions/{function}/invocations", data=body)
    SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
elif door == "fc":
    import alibabacloud_tea_openapi.client as openapi_client
    from alibabacloud_fc20230330.client import Client
    from alibabacloud_fc20230330 import models
    from alibabacloud_tea_openapi import utils_models
    from darabonba.runtime import RuntimeOptions

    captured = {}

    def capture(request, runtime, *a, **kw):
        captured.update(request.headers)
        raise SystemExit(0)

    openapi_client.DaraCore.do_action = staticmethod(capture)
    cfg = utils_models.Config(access_key_id=key, access_key_secret=secret,
                              endpoint=endpoint.removeprefix("https://"), protocol="https")
    try:
        Client(cfg).invoke_function_with_options(function, models.InvokeFunctionRequest(body=body),
                                                 models.InvokeFunctionHeaders(), RuntimeOptions())
    except SystemExit:
        pass
    headers = captured
else:
    sys.exit(f"unknown door {door}")

for k, v in headers.items():
    if k.lower() not in ("host", "content-length"):
        print(f"{k}: {v.decode() if isinstance(v, bytes) else v}")
