"""Clients of the real cloud SDKs pointed at a local fngate (loopback only).

Every client trusts the gateway's CA file and makes exactly one attempt per
call, so each check sees the gateway's own answer (no SDK retries)."""
import base64
import json
import sys

import boto3
import botocore
from botocore.config import Config
from alibabacloud_fc20230330.client import Client as FcClient
from alibabacloud_fc20230330 import models as fc_models
from alibabacloud_tea_openapi import utils_models as open_api_models
from darabonba.runtime import RuntimeOptions


def args():
    endpoint, ca = sys.argv[1], sys.argv[2]
    assert endpoint.startswith("https://127.") or endpoint.startswith("https://localhost"), endpoint
    return endpoint, ca


def lambda_client(endpoint, ca, key="AKIDTEST", secret="not-checked", unsigned=False):
    cfg = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10, read_timeout=30)
    if unsigned:
        cfg = cfg.merge(Config(signature_version=botocore.UNSIGNED))
    s = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1")
    return s.client("lambda", endpoint_url=endpoint, verify=ca, config=cfg)


def fc_client(endpoint, ca, key="LTAITEST", secret="not-checked"):
    host = endpoint.removeprefix("https://")
    cfg = open_api_models.Config(
        access_key_id=key, access_key_secret=secret, endpoint=host, protocol="https", ca=ca,
        read_timeout=30000, connect_timeout=10000,
    )
    return FcClient(cfg)


def fc_invoke(client, function, body, invocation_type="Sync", log_type="None"):
    headers = fc_models.InvokeFunctionHeaders(x_fc_invocation_type=invocation_type, x_fc_log_type=log_type)
    req = fc_models.InvokeFunctionRequest(body=body)
    return client.invoke_function_with_options(function, req, headers, RuntimeOptions())


def b64(s):
    return base64.b64decode(s).decode()


def code_of(e):
    """The error code botocore found (header first, then body)."""
    return e.response["Error"]["Code"]


def ok(what):
    print("ok:", what, flush=True)


def done():
    print("all ok", flush=True)
