"""Request handlers the integration tests serve through ``python -m runtime``.

Importable as ``handlers:Name`` with this folder on PYTHONPATH.
"""

from __future__ import annotations

import http.server
import socketserver
import time

import runtime


class HoldHandler(socketserver.StreamRequestHandler):
    """Acks a ``hold`` line at once, then answers ``done`` only after the client says ``go``.

    So a test knows exactly when a request is in flight, and decides when it ends.
    """

    def handle(self) -> None:
        if not self.rfile.readline().startswith(b"hold"):
            return
        self.wfile.write(b"ack\n")
        if self.rfile.readline().startswith(b"go"):
            self.wfile.write(b"done\n")


class LoggingHandler(socketserver.StreamRequestHandler):
    """Binds a field for its request and logs through the standard logging module."""

    def handle(self) -> None:
        import logging

        import runtime

        name = self.rfile.readline().strip().decode()
        runtime.bind(user=name)
        logging.getLogger("app").warning("hello %s", name)
        self.wfile.write(b"ok\n")


class TracingHandler(socketserver.StreamRequestHandler):
    """Echoes a line inside a span of its own, made with the global tracer."""

    def handle(self) -> None:
        from opentelemetry import trace

        line = self.rfile.readline()
        with trace.get_tracer("handlers").start_as_current_span("echo-work"):
            self.wfile.write(line)


class StatusHandler(socketserver.StreamRequestHandler):
    """One line per request: ``fail`` raises (markup in its message), ``slow`` waits, else echo."""

    #: Shows up on the status page, where it must stay text.
    MESSAGE = '<img src=x id="injected"> & <b>not bold</b>'

    def handle(self) -> None:
        import time

        line = self.rfile.readline()
        if line.startswith(b"fail"):
            raise ValueError(self.MESSAGE)
        if line.startswith(b"slow"):
            time.sleep(0.4)
        self.wfile.write(line)


class PidHandler(socketserver.StreamRequestHandler):
    """Answers each line with the worker's pid; ``hang`` never answers (a hung worker)."""

    def handle(self) -> None:
        import os

        for line in self.rfile:
            if line.startswith(b"hang"):
                hang_forever()
            self.wfile.write(b"%d\n" % os.getpid())


def hang_forever() -> None:
    import time

    while True:
        time.sleep(3600)


class FloodHandler(socketserver.StreamRequestHandler):
    """Reads a line, says ``go``, then writes until the client is gone (it resets)."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"go\n")
        chunk = b"x" * 65536
        while True:
            self.wfile.write(chunk)


class SlowHTTPHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; ``GET /slow`` takes a second, anything else answers at once."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        body = f"{self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class OkHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive: every GET is a 200 with the body ``ok``; no stderr lines."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class CommandsHandler(socketserver.StreamRequestHandler):
    """A Redis-like line protocol that marks each command with ``runtime.operation()``.

    ``SET key value``, ``GET key``, ``INCR key`` on the connection's own keys, one reply
    line each, as many commands as the client sends. INCR of a value that is not an
    integer raises inside the operation (its outcome: error) and answers ``ERR ...``; the
    connection goes on, as a real server's would.
    """

    def handle(self) -> None:
        store: dict[str, str] = {}
        for line in self.rfile:
            command, _, args = line.decode().strip().partition(" ")
            key, _, value = args.partition(" ")
            try:
                with runtime.operation(command, key=key):
                    reply = _command(store, command, key, value)
            except ValueError as exc:
                reply = f"ERR {exc}"
            self.wfile.write(reply.encode() + b"\n")


def _command(store: dict[str, str], command: str, key: str, value: str) -> str:
    if command == "SET":
        store[key] = value
        return "OK"
    if command == "GET":
        return store.get(key, "")
    if command == "INCR":
        current = store.get(key, "0")
        if not current.lstrip("-").isdigit():
            raise ValueError("not an integer")
        store[key] = str(int(current) + 1)
        return store[key]
    raise ValueError(f"unknown command {command!r}")
