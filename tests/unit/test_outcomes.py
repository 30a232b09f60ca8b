"""Outcomes that are not the server's fault: a peer that leaves, a time limit that ends a request.

A client resetting its connection mid-request is ``client_closed`` (logged at info,
no traceback, out of ``errors_total`` and so out of the error ratio); the same
exception raised by the handler's own connection to another service is the
server's ``error``; a client too slow for ``connection_timeout`` is ``timed_out``.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _proc import RuntimeProcess, connect, poll

import runtime
from runtime._request import early_end

REQUESTS = "socketserver_requests_total"


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): what a crashed or impatient peer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class WritesUntilGone(runtime.StreamRequestHandler):
    """Reads a line, then writes until the peer is gone (it resets the connection)."""

    def handle(self) -> None:
        self.rfile.readline()
        self.server.started.set()  # type: ignore[attr-defined]
        chunk = b"x" * 65536
        while True:
            self.wfile.write(chunk)


class BackendResets(runtime.StreamRequestHandler):
    """Its own connection to another service is reset: the server's error, not the client's."""

    def handle(self) -> None:
        self.rfile.readline()
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.sendall(b"data for b, never read")
        b.close()  # b had unread data: a sees a reset
        try:
            a.recv(10)  # ConnectionResetError on the backend connection
            raise ConnectionResetError("backend reset")
        finally:
            a.close()


class ReadsALine(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.fixture
def start(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any
) -> Callable[..., Any]:
    def make(handler: type, **attrs: Any) -> Any:
        cls = type("Server", (runtime.ThreadingTCPServer,), attrs)
        server = cls(
            ("127.0.0.1", 0), handler, telemetry=telemetry, logger=json_logger, server_name="s"
        )
        server.started = threading.Event()
        return serve(server)

    return make


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_a_client_that_resets_mid_request_is_client_closed_not_an_error(
    start: Callable[..., Any],
    metric: Callable[..., float],
    wait_for: Callable[..., None],
    log_stream: io.StringIO,
) -> None:
    server = start(WritesUntilGone)
    sock = socket.create_connection(server.server_address, timeout=10)
    sock.sendall(b"go\n")
    assert server.started.wait(10)
    sock.recv(1000)  # the response is flowing
    _reset(sock)
    wait_for(lambda: metric(REQUESTS, outcome="client_closed") == 1, what="client_closed")
    assert metric(REQUESTS, outcome="error") == 0
    assert metric("socketserver_errors_total") == 0  # not in the error ratio, nor the errors panel
    lines = _lines(log_stream)
    assert not [line for line in lines if line["level"] == "error"], lines
    (closed,) = [line for line in lines if line["event"] == "client closed the connection"]
    assert closed["level"] == "info" and "exception" not in closed
    assert closed["error_type"] in ("ConnectionResetError", "BrokenPipeError")
    (access,) = [line for line in lines if line["event"] == "request"]
    assert access["outcome"] == "client_closed"


def test_a_reset_from_the_handlers_own_backend_is_still_an_error(
    start: Callable[..., Any],
    metric: Callable[..., float],
    wait_for: Callable[..., None],
    log_stream: io.StringIO,
) -> None:
    server = start(BackendResets)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"go\n")
        assert sock.recv(10) == b""  # the server closed it after the failure
    wait_for(lambda: metric(REQUESTS, outcome="error") == 1, what="error")
    assert metric(REQUESTS, outcome="client_closed") == 0
    assert metric("socketserver_errors_total", error_type="ConnectionResetError") == 1
    (failed,) = [line for line in _lines(log_stream) if line["event"] == "request failed"]
    assert failed["level"] == "error" and failed["exception"]


def test_a_client_slower_than_the_idle_limit_is_timed_out(
    start: Callable[..., Any],
    metric: Callable[..., float],
    wait_for: Callable[..., None],
    log_stream: io.StringIO,
) -> None:
    server = start(ReadsALine, connection_timeout=0.2)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"no newline, then silence")
        assert sock.recv(10) == b""  # cut by the idle limit
    wait_for(lambda: metric(REQUESTS, outcome="timed_out") == 1, what="timed_out")
    assert metric(REQUESTS, outcome="error") == 0
    (line,) = [line for line in _lines(log_stream) if line["event"] == "request timed out"]
    assert line["level"] == "info" and line["error_type"] == "TimeoutError"


@pytest.mark.timeout(60)
def test_a_forked_child_reports_a_client_that_left() -> None:
    # A real process: a child forked from the test process would hold the test's own
    # end of the connection open, and the reset would never reach it.
    rt = RuntimeProcess("handlers:FloodHandler", "--mode", "fork", "--drain-delay", "0")
    try:
        sock = connect(rt.address)
        sock.sendall(b"go\n")
        assert sock.makefile("rb").readline() == b"go\n"  # the child is writing
        _reset(sock)
        poll(lambda: rt.metric(REQUESTS, outcome="client_closed") == 1, what="client_closed")
        assert rt.metric(REQUESTS, outcome="error") == 0
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
    finally:
        rt.close()
    assert code == 0
    assert '"level": "error"' not in err


def test_early_end_needs_the_clients_own_connection() -> None:
    client, other = socket.socketpair()
    try:
        assert early_end(TimeoutError("somewhere else"), client) == ""
        assert early_end(ValueError("a bug"), client) == ""
        assert early_end(None, client) == ""
        assert early_end(ConnectionResetError(), (b"datagram", client)) == ""
        other.close()  # the peer is gone: a reset the handler saw is the client's doing
        assert early_end(ConnectionResetError(), client) == "client_closed"
        assert early_end(BrokenPipeError(), client) == "client_closed"
    finally:
        client.close()
