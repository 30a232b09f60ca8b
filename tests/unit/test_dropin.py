"""Drop-in fidelity: exceptions that end a server, skipped ``__init__``s, what a drop-in prints.

``import runtime as socketserver`` must behave as the standard library where user
code relies on it; CPython's own suite checks the rest (test_cpython_socketserver.py).
"""

from __future__ import annotations

import io
import json
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

import pytest

import runtime
from runtime.telemetry.logging import make_logger

REQUESTS = "socketserver_requests_total"


class Exits(runtime.BaseRequestHandler):
    def handle(self) -> None:
        raise SystemExit("the handler wants out")


class Echo(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Handled(runtime.TCPServer):
    handled = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.handled += 1


def test_system_exit_in_a_sync_handler_ends_handle_request_and_is_counted(
    telemetry: runtime.Telemetry, metric: Callable[..., float]
) -> None:
    with Handled(("127.0.0.1", 0), Exits, telemetry=telemetry,
                 logger=make_logger(stream=io.StringIO())) as server:  # fmt: skip
        with socket.create_connection(server.server_address), pytest.raises(SystemExit):
            server.handle_request()  # the standard library lets it through...
        assert server.handled == 0  # ... without handle_error
    assert metric(REQUESTS, outcome="error") == 1  # and the runtime still counts it
    assert metric("socketserver_errors_total", error_type="SystemExit") == 1


def test_system_exit_ends_a_worker_thread_without_handle_error(
    telemetry: runtime.Telemetry, serve: Any, wait_for: Callable[..., None]
) -> None:
    class Threaded(runtime.ThreadingMixIn, Handled):
        pass

    seen: list[type[BaseException]] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_type)
    try:
        server = serve(Threaded(("127.0.0.1", 0), Exits, telemetry=telemetry,
                                logger=make_logger(stream=io.StringIO())))  # fmt: skip
        with socket.create_connection(server.server_address, timeout=10) as sock:
            assert sock.recv(10) == b""  # shut down all the same
        wait_for(lambda: seen == [SystemExit], what="the thread ended by SystemExit")
        assert server.handled == 0
        server.RequestHandlerClass = Echo  # the pool goes on with a new thread
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"still here\n")
            assert sock.makefile("rb").readline() == b"still here\n"
    finally:
        threading.excepthook = old_hook


class OldStyle(runtime.ThreadingTCPServer):
    """Calls a base class's __init__ by name, skipping the mix-in's (older code does)."""

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        socketserver.TCPServer.__init__(self, address, handler)


def test_a_server_that_skips_the_mix_ins_init_works_and_is_measured(
    telemetry: runtime.Telemetry, serve: Any, metric: Callable[..., float],
    wait_for: Callable[..., None],
) -> None:  # fmt: skip
    server = OldStyle(("127.0.0.1", 0), Echo)
    server.use_telemetry(telemetry)
    serve(server)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"hi\n"
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 1, what="the request counted")
    assert server.server_label == "OldStyle"


def test_a_direct_finish_request_is_measured(
    telemetry: runtime.Telemetry, metric: Callable[..., float]
) -> None:
    """As wsgiref's own tests do: ``BaseServer.__init__`` then ``finish_request`` by hand."""

    class MockServer(runtime.BaseServer):
        def __init__(self) -> None:
            socketserver.BaseServer.__init__(self, ("127.0.0.1", 0), Echo)

    server = MockServer()
    server.use_telemetry(telemetry)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"direct\n")
        server.finish_request(b, ("127.0.0.1", 1))
        assert a.recv(100) == b"direct\n"
    assert metric(REQUESTS, outcome="ok") == 1
    assert metric("socketserver_hook_duration_seconds_count", hook="handle") == 1
    assert server.runtime_stats()["in_flight"] == 0


@pytest.mark.parametrize(
    ("access_log", "with_telemetry", "lines"),
    [
        (None, False, 0),  # a drop-in: the standard library prints nothing per request
        (None, True, 1),  # who asked for telemetry gets access lines
        (True, False, 1),  # the one switch
        (False, True, 0),
    ],
)
def test_what_a_drop_in_server_prints_per_request(
    access_log: bool | None, with_telemetry: bool, lines: int, serve: Any,
    wait_for: Callable[..., None],
) -> None:  # fmt: skip
    stream = io.StringIO()
    cls = type("Server", (runtime.TCPServer,), {"access_log": access_log})
    telemetry = runtime.Telemetry() if with_telemetry else None
    done = threading.Event()

    class Counted(Echo):
        def finish(self) -> None:
            super().finish()
            done.set()

    server = serve(cls(("127.0.0.1", 0), Counted, telemetry=telemetry,
                       logger=make_logger(fmt="json", stream=stream)))  # fmt: skip
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"hi\n"
    assert done.wait(10)
    wait_for(lambda: server.runtime_stats()["in_flight"] == 0, what="the request finished")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events.count("request") == lines


@pytest.mark.parametrize("server_class", [runtime.TCPServer, runtime.ThreadingTCPServer])
def test_a_failed_request_is_freed_at_once_not_by_the_cycle_collector(
    server_class: type, serve: Any
) -> None:
    """As the standard library: the handler of a request that raised is gone when it ends."""
    import gc
    import weakref

    handlers: list[weakref.ref[Any]] = []

    class Raises(runtime.BaseRequestHandler):
        def handle(self) -> None:
            handlers.append(weakref.ref(self))
            raise ValueError("handled by handle_error")

    gc.disable()
    try:
        server = server_class(("127.0.0.1", 0), Raises, logger=make_logger(stream=io.StringIO()))
        with socket.create_connection(server.server_address, timeout=10) as sock:
            server.handle_request()
            assert sock.recv(10) == b""
        server.server_close()
        del server
        assert len(handlers) == 1 and handlers[0]() is None
    finally:
        gc.enable()
