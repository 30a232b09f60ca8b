"""``/livez`` tells the truth when requests stop completing while connections wait.

The serving loop's heartbeat alone said "alive" while every worker thread was
stuck (on a full log pipe, a lock, a dead backend) and connections queued for
them: the loop itself keeps turning.  Now a stall — connections waiting for a
worker while no request completes and no connection moves a byte — past
``liveness_timeout`` fails ``/livez``.  A full pool whose requests are slow but
moving is not a stall; keep-alive connections idle for a while give their
thread to a connection that waits.
"""

from __future__ import annotations

import http.client
import http.server
import io
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _proc import RuntimeProcess, connect, poll

import runtime
from runtime.lifecycle import Lifecycle
from runtime.telemetry.logging import make_logger


class Stuck(runtime.StreamRequestHandler):
    """Blocks without any I/O until released (a lock, a dead backend)."""

    def handle(self) -> None:
        self.rfile.readline()
        self.server.release.wait(30)  # type: ignore[attr-defined]
        self.wfile.write(b"done\n")


class Trickles(runtime.StreamRequestHandler):
    """A slow download: a byte every 50 ms until released."""

    def handle(self) -> None:
        self.rfile.readline()
        while not self.server.release.wait(0.05):  # type: ignore[attr-defined]
            self.wfile.write(b".")
        self.wfile.write(b"done\n")


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"hi\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def pool_of_two(telemetry: runtime.Telemetry, serve: Any) -> Iterator[Callable[[type], Any]]:
    servers: list[Any] = []

    def make(handler: type) -> Any:
        cls = type("Two", (runtime.ThreadingTCPServer,), {"max_children": 2})
        server = cls(("127.0.0.1", 0), handler, telemetry=telemetry, logger=_quiet())
        server.release = threading.Event()
        servers.append(server)
        return serve(server)

    yield make
    for server in servers:
        server.release.set()


def _quiet() -> Any:
    return make_logger(stream=io.StringIO())  # (access lines: telemetry is on)


def _live(server: Any, timeout: float) -> Callable[[], bool]:
    lifecycle = Lifecycle(liveness_timeout=timeout)
    lifecycle.stall_check = server.stalled_for

    def live() -> bool:
        lifecycle.heartbeat()  # the serving loop turns: only a stall can fail it
        return lifecycle.live()

    return live


def _occupy(server: Any, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = connect(server.server_address)
        sock.sendall(b"go\n")
        socks.append(sock)
    return socks


def test_stuck_workers_with_connections_waiting_fail_livez(
    pool_of_two: Callable[[type], Any], wait_for: Callable[..., None]
) -> None:
    server = pool_of_two(Stuck)
    live = _live(server, 1.5)
    socks = _occupy(server, 3)  # two stuck, one waiting for a thread
    try:
        wait_for(lambda: server.runtime_stats()["queue_depth"] == 1, what="one waiting")
        assert live()
        wait_for(lambda: not live(), what="/livez failing")
        server.release.set()
        for sock in socks:
            assert sock.makefile("rb").readline() == b"done\n"
        wait_for(live, what="/livez passing again")
    finally:
        for sock in socks:
            sock.close()


def test_a_full_pool_of_slow_but_moving_requests_is_not_a_stall(
    pool_of_two: Callable[[type], Any], wait_for: Callable[..., None]
) -> None:
    server = pool_of_two(Trickles)
    live = _live(server, 3.0)
    socks = _occupy(server, 3)
    try:
        wait_for(lambda: server.runtime_stats()["queue_depth"] == 1, what="one waiting")
        # Longer than the liveness timeout, with no request completing: bytes move.
        for _ in range(10):
            assert not server.release.wait(0.5)  # a window of time, not a synchronisation
            assert live(), server.stalled_for()
    finally:
        server.release.set()
        for sock in socks:
            sock.close()


def test_idle_keepalive_connections_give_their_threads_to_waiting_ones(
    telemetry: runtime.Telemetry, serve: Any
) -> None:
    cls = type("Two", (runtime.ThreadingTCPServer,), {"max_children": 2, "queue_size": 4})
    server = serve(cls(("127.0.0.1", 0), Hello, telemetry=telemetry, logger=_quiet()))
    idle = []
    for _ in range(2):  # both threads now wait, idle, for these clients' next requests
        conn = http.client.HTTPConnection(*server.server_address, timeout=30)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"hi\n"
        idle.append(conn)
    # A third client waits for a thread; after a second of idleness one is given up
    # (before: it waited for the idle limit, connection_timeout, or forever).
    third = http.client.HTTPConnection(*server.server_address, timeout=10)
    third.request("GET", "/")
    assert third.getresponse().read() == b"hi\n"
    for conn in [*idle, third]:
        conn.close()


@pytest.mark.timeout(120)
def test_a_prefork_worker_whose_threads_are_stuck_is_replaced() -> None:
    rt = RuntimeProcess(
        "handlers:PidHandler", "--mode", "prefork", "--workers", "1", "--threads", "2",
        "--worker-timeout", "2", "--connection-timeout", "1", "--drain-delay", "0",
        "--graceful-timeout", "1",
    )  # fmt: skip
    socks: list[socket.socket] = []
    try:
        poll(rt.ready, timeout=20, what="ready")
        for _ in range(4):  # two stuck on their threads, two waiting in the kernel's queue
            sock = connect(rt.address)
            sock.sendall(b"hang\n")
            socks.append(sock)
        # The worker stops beating once stalled; the supervisor aborts and replaces it.
        poll(lambda: rt.metric("socketserver_worker_exits_total", cause="timeout") >= 1,
             timeout=60, what="the stuck worker replaced")  # fmt: skip
        # Its replacement takes the two waiting ones, and is stuck in turn: SIGTERM still
        # ends it all (forced: exit 1), never waiting on threads no cut can reach.
        rt.signal()
        code, err = rt.wait(30)
    finally:
        for sock in socks:
            sock.close()
        rt.close()
    assert code == 1, err[-2000:]


@pytest.mark.timeout(60)
def test_sigterm_ends_a_server_whose_handler_is_stuck_without_io() -> None:
    rt = RuntimeProcess("handlers:PidHandler", "--drain-delay", "0", "--graceful-timeout", "1")
    try:
        sock = connect(rt.address)
        sock.sendall(b"hang\n")
        poll(lambda: rt.metric("socketserver_requests_in_flight") == 1, what="in flight")
        rt.signal()
        code, err = rt.wait(30)  # before: it joined the stuck thread forever
        sock.close()
    finally:
        rt.close()
    assert code == 1 and '"forced requests"' in err
