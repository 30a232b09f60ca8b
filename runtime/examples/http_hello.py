"""HTTP hello: ``http.server`` answering GET with a short greeting.

``/`` and ``/items/<id>`` answer 200, ``/error`` 500, any other path 404, any
other method 501 (http.server's own answer).  ``runtime.set_route`` names the
route of ``/items/<id>`` requests, so the metrics and spans say
``/items/{id}``, never the raw path.
"""

from __future__ import annotations

import http.server

import runtime


class HelloHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/":
            runtime.set_route("/")
            self.reply(200, b"hello, world\n")
        elif path.startswith("/items/"):
            runtime.set_route("/items/{id}")
            self.reply(200, b"item " + path[7:].encode()[:64] + b"\n")
        elif path == "/error":
            runtime.set_route("/error")
            self.send_error(500, "the demo's error")
        else:
            self.send_error(404)

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
