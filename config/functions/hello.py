"""Example fngate function in Python, standard library only.

Serves both shapes of the fngate function contract on $FC_SERVER_PORT:
- event (the FC and Lambda doors): POST /invoke with the event payload as the
  body; answers JSON;
- HTTP trigger (the Azure door, a request with `x-fngate-trigger: http`): any
  method at any path; answers JSON describing the request.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status, body):
        body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _payload(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self):
        greeting = os.environ.get("GREETING", "Hello")
        if self.headers.get("x-fngate-trigger") == "http":
            path, _, query = self.path.partition("?")
            payload = self._payload()
            self._answer(200, {
                "message": f"{greeting} from Python over HTTP",
                "method": self.command,
                "path": path,
                "query": query,
                "requestId": self.headers.get("x-fngate-request-id"),
                "payloadBytes": len(payload),
            })
            return
        if self.command != "POST" or self.path != "/invoke":
            self.send_error(404)
            return
        payload = self._payload()
        # Printed lines are the invocation's log (Tail shows them).
        print(f"invoked with {len(payload)} bytes", flush=True)
        self._answer(200, {
            "message": f"{greeting} from Python",
            "requestId": self.headers.get("x-fc-request-id"),
            "function": os.environ.get("FC_FUNCTION_NAME"),
            "instance": os.environ.get("FC_INSTANCE_ID"),
            "payloadBytes": len(payload),
            "clientContext": self.headers.get("x-fngate-client-context"),
        })

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, fmt, *args):
        pass  # the worker already logs per instance


if __name__ == "__main__":
    host = os.environ.get("FC_SERVER_HOST", "0.0.0.0")
    port = int(os.environ["FC_SERVER_PORT"])
    ThreadingHTTPServer((host, port), Handler).serve_forever()
