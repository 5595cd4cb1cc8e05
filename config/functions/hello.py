"""Example fngate function in Python, standard library only.

Serves the fngate function contract: POST /invoke on $FC_SERVER_PORT with the
event payload as the body; answers JSON.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        if self.path != "/invoke":
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        body = json.dumps({
            "message": f"{os.environ.get('GREETING', 'Hello')} from Python",
            "requestId": self.headers.get("x-fc-request-id"),
            "function": os.environ.get("FC_FUNCTION_NAME"),
            "instance": os.environ.get("FC_INSTANCE_ID"),
            "payloadBytes": len(payload),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass  # the worker already logs per instance


if __name__ == "__main__":
    host = os.environ.get("FC_SERVER_HOST", "0.0.0.0")
    port = int(os.environ["FC_SERVER_PORT"])
    ThreadingHTTPServer((host, port), Handler).serve_forever()
