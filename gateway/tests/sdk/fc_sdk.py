"""The Function Compute 3.0 SDK against the FC door (auth = "none").
Usage: fc_sdk.py ENDPOINT CA"""
import json
import time

from alibabacloud_fc20230330 import models as fc_models
from alibabacloud_tea_openapi.exceptions import ClientException, ThrottlingException
from darabonba.runtime import RuntimeOptions

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

def submit_task(function, body, task_id):
    h = fc_models.InvokeFunctionHeaders(x_fc_invocation_type="Async", x_fc_async_task_id=task_id)
    req = fc_models.InvokeFunctionRequest(body=body)
    return c.invoke_function_with_options(function, req, h, RuntimeOptions())


def task_until(function, task_id, status):
    for _ in range(600):
        t = c.get_async_task(function, task_id, fc_models.GetAsyncTaskRequest()).body
        if t.status == status:
            return t
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} is {t.status}, not {status}")


r = submit_task("echo", b"task body", "sdk-task-1")
assert r.status_code == 202 and r.headers["x-fc-async-task-id"] == "sdk-task-1", r.headers
t = task_until("echo", "sdk-task-1", "Succeeded")
assert t.task_id == "sdk-task-1" and t.request_id == r.headers["x-fc-request-id"], t.to_map()
assert t.already_retried_times == 0 and t.task_payload == "task body" and t.end_time >= t.started_time
assert [e.status for e in t.events][:2] == ["Enqueued", "Running"], t.to_map()
again = submit_task("echo", b"task body", "sdk-task-1")
assert again.headers["x-fc-request-id"] == r.headers["x-fc-request-id"]
ok("GetAsyncTask (a known task id is not run twice)")

listed = c.list_async_tasks("echo", fc_models.ListAsyncTasksRequest(status="Succeeded", limit=10)).body
# Newest first: this task, then the plain Async call (its task id is its request id).
assert [x.task_id for x in listed.tasks][0] == "sdk-task-1" and len(listed.tasks) == 2, listed.to_map()
ok("ListAsyncTasks")

submit_task("echo", b"fngate:hold:/nonexistent/never", "sdk-task-2")
task_until("echo", "sdk-task-2", "Running")
c.stop_async_task("echo", "sdk-task-2", fc_models.StopAsyncTaskRequest())
assert task_until("echo", "sdk-task-2", "Stopped").end_time
ok("StopAsyncTask")

try:
    c.get_async_task("echo", "no-such-task", fc_models.GetAsyncTaskRequest())
    raise AssertionError("an unknown task must raise")
except ClientException as e:
    assert e.code == "AsyncTaskNotFound" and e.status_code == 404, vars(e)
ok("AsyncTaskNotFound")

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
