"""Slow or hostile peers get a bounded cost; well-behaved clients keep being served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import runtime
from runtime.watchdog import Watchdog


class LineEcho(runtime.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        if line:
            self.wfile.write(line)


class OwnTimeout(LineEcho):
    timeout = 5.0  # the handler's own attribute wins over the server's default


def _trickle(address: tuple[str, int], interval: float, stop: threading.Event) -> str:
    """A slowloris: one byte every *interval*, never a newline. Returns how it ended."""
    sock = socket.create_connection(address, timeout=10)
    try:
        while not stop.is_set():
            try:
                sock.sendall(b"x")
            except OSError:
                return "cut"
            stop.wait(interval)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    return "cut"
            except BlockingIOError:
                pass
            except OSError:
                return "cut"
            finally:
                sock.setblocking(True)
        return "still open"
    finally:
        sock.close()


@pytest.fixture
def server_factory() -> Iterator[Any]:
    started: list[tuple[Any, threading.Thread, Watchdog | None]] = []

    def make(handler: type, request_timeout: float | None = None, **attrs: Any) -> Any:
        cls = type("Server", (runtime.ThreadingTCPServer,), {"request_queue_size": 64, **attrs})
        server = cls(("127.0.0.1", 0), handler, telemetry=runtime.Telemetry(), server_name="s")
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        dog = None
        if request_timeout is not None:
            dog = Watchdog(server, timeout=request_timeout)
            dog.start()
        started.append((server, thread, dog))
        return server

    yield make
    for server, thread, dog in started:
        if dog is not None:
            dog.stop()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _served(address: tuple[str, int], deadline: float) -> bool:
    with socket.create_connection(address, timeout=deadline) as sock:
        sock.sendall(b"hello\n")
        return sock.makefile("rb").readline() == b"hello\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("interval", "request_timeout"),
    [
        (1.0, None),  # one byte a second: the idle timeout cuts them
        (0.1, 1.0),  # faster than the idle timeout: the request timeout cuts them
    ],
)
def test_slowloris_cannot_hold_the_pool(
    server_factory: Any, interval: float, request_timeout: float | None
) -> None:
    server = server_factory(
        LineEcho, request_timeout, max_children=4, queue_size=0, connection_timeout=0.5
    )
    stop = threading.Event()
    results: list[str] = []
    trickles = [
        threading.Thread(
            target=lambda: results.append(_trickle(server.server_address, interval, stop))
        )
        for _ in range(8)  # twice the pool
    ]
    for t in trickles:
        t.start()
    try:
        # While they trickle, well-behaved clients are still answered, each within a
        # couple of timeouts (they may wait for a cut connection to free a worker).
        started = time.monotonic()
        for _ in range(5):
            assert _served(server.server_address, deadline=5.0)
        assert time.monotonic() - started < 10
        # Those queued behind the pool are taken, and cut, in their turn.
        deadline = time.monotonic() + 15
        for t in trickles:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        stop.set()
        for t in trickles:
            t.join(15)
    assert results.count("cut") == 8, results
    # Ended by a time limit (the idle limit or the request timeout): not handler errors.
    def outcome(name: str) -> float:
        value = server.telemetry.registry.get_sample_value(
            "socketserver_requests_total", {"server": "s", "transport": "tcp", "outcome": name}
        )
        return value or 0.0

    # (a cut client sees the end before its request is counted)
    deadline = time.monotonic() + 10
    while outcome("timed_out") < 8 and time.monotonic() < deadline:
        time.sleep(0.01)  # a poll with a deadline
    assert outcome("timed_out") >= 8
    assert outcome("error") == 0


@pytest.mark.timeout(30)
def test_the_handlers_own_timeout_wins(server_factory: Any) -> None:
    server = server_factory(OwnTimeout, connection_timeout=0.2)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"part")
        time.sleep(0.6)  # the pause under test: longer than the server's 0.2 s default
        sock.sendall(b"ial\n")
        assert sock.makefile("rb").readline() == b"partial\n"
