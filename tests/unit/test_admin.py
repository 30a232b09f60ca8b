"""The admin side port: probes, metrics, content negotiation, 404/405, not counted."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

import runtime
from runtime.admin import AdminServer
from runtime.lifecycle import Runtime, State


class Echo(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class Stack:
    def __init__(self) -> None:
        self.telemetry = runtime.Telemetry()
        self.server = runtime.ThreadingTCPServer(
            ("127.0.0.1", 0), Echo, telemetry=self.telemetry, server_name="app"
        )
        self.runtime = Runtime(self.server, drain_delay=30, handle_signals=False)
        self.admin = AdminServer(
            ("127.0.0.1", 0), lifecycle=self.runtime.lifecycle, render_metrics=self.telemetry.render
        )
        self.admin.start()

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.admin.address, timeout=5)
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        return reply.status, dict(reply.headers), body


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.admin.close()
    s.server.server_close()


def test_probes_follow_the_lifecycle(stack: Stack) -> None:
    assert stack.request("GET", "/livez")[0] == 200
    assert stack.request("GET", "/readyz")[0] == 503  # starting: not ready yet
    stack.runtime.lifecycle.to(State.SERVING)
    assert stack.request("GET", "/readyz")[0] == 200
    stack.runtime.lifecycle.to(State.DRAINING)
    assert stack.request("GET", "/readyz")[0] == 503
    assert stack.request("GET", "/livez")[0] == 200
    stack.runtime.lifecycle.heartbeat_at -= 3600
    assert stack.request("GET", "/livez")[0] == 503


def test_readiness_fails_the_moment_a_drain_begins(stack: Stack) -> None:
    thread = threading.Thread(target=stack.runtime.run)
    thread.start()
    try:
        deadline_ok = False
        for _ in range(500):
            if stack.request("GET", "/readyz")[0] == 200:
                deadline_ok = True
                break
            threading.Event().wait(0.01)
        assert deadline_ok
        stack.runtime.stop()
        assert stack.request("GET", "/readyz")[0] == 503  # at once, no loop turn needed
    finally:
        stack.runtime.stop(immediate=True)
        thread.join(10)
    assert not thread.is_alive()


def test_metrics_text_and_openmetrics(stack: Stack) -> None:
    with socket.create_connection(stack.server.server_address) as sock:
        stack.server.handle_request()
    del sock
    status, headers, body = stack.request("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"socketserver_hook_duration_seconds_count" in body
    status, headers, body = stack.request(
        "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_unknown_path_404_other_methods_405(stack: Stack) -> None:
    assert stack.request("GET", "/nope")[0] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH", "BREW"):
        status, headers, _ = stack.request(method, "/livez")
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    status, _, body = stack.request("HEAD", "/livez")
    assert status == 200 and body == b""


def test_admin_traffic_is_not_application_traffic(stack: Stack) -> None:
    for _ in range(5):
        stack.request("GET", "/livez")
    registry = stack.telemetry.registry
    for outcome in ("ok", "error", "rejected"):
        assert registry.get_sample_value(
            "socketserver_requests_total", {"server": "app", "transport": "tcp", "outcome": outcome}
        ) == 0.0
    _, _, body = stack.request("GET", "/metrics")
    assert b'server="app"' in body
    assert b"admin" not in body.lower().replace(b"socketserver-runtime-admin", b"")


def test_slow_peers_cannot_starve_the_probes() -> None:
    import time

    stack = Stack()
    stack.admin.close()  # rebuilt with a short total limit per request, for the test's sake
    stack.admin = AdminServer(
        ("127.0.0.1", 0), lifecycle=stack.runtime.lifecycle,
        render_metrics=stack.telemetry.render, request_timeout=1.0,
    )  # fmt: skip
    stack.admin.start()
    stop = threading.Event()

    def trickle() -> None:  # a request line that never ends, one byte at a time
        with socket.create_connection(stack.admin.address, timeout=10) as sock:
            try:
                sock.sendall(b"GET /livez HTTP/1.1\r\nX-Slow: ")
                while not stop.is_set():
                    sock.sendall(b"x")
                    stop.wait(0.1)
            except OSError:
                return  # cut by the admin port: what we want

    peers = [threading.Thread(target=trickle) for _ in range(8)]  # twice the admin's workers
    for peer in peers:
        peer.start()
    try:
        started = time.monotonic()
        answered = False
        while not answered and time.monotonic() - started < 8:
            try:
                answered = stack.request("GET", "/livez")[0] == 200
            except (OSError, http.client.HTTPException):
                pass  # refused while full: try again
        assert answered, "the probe was starved by slow peers"
    finally:
        stop.set()
        for peer in peers:
            peer.join(10)
        stack.admin.close()
        stack.server.server_close()


def test_a_peer_hanging_up_is_not_logged_as_an_admin_error() -> None:
    import io
    import struct

    from runtime.lifecycle import Lifecycle
    from runtime.telemetry.logging import make_logger

    def render(accept: str) -> tuple[bytes, str]:
        if "fail" in accept:
            raise ValueError("a real bug")
        return b"x" * (8 << 20), "text/plain"  # more than the kernel buffers: still writing

    stream = io.StringIO()
    admin = AdminServer(
        ("127.0.0.1", 0), lifecycle=Lifecycle(), render_metrics=render,
        logger=make_logger(stream=stream, fmt="json"),
    )  # fmt: skip
    admin.start()
    try:
        with socket.create_connection(admin.address, timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            sock.recv(1024)  # the response has begun; now reset the connection under it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn = http.client.HTTPConnection(*admin.address, timeout=5)
        conn.request("GET", "/metrics", headers={"Accept": "fail"})
        assert conn.getresponse().status == 500
        conn.close()
    finally:
        admin.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "a real bug" in lines[0]


def test_a_failing_scrape_answers_500_with_the_error() -> None:
    """A collector that raises: the scraper gets a status and a reason, not a closed connection."""

    def broken(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("a collector failed")

    server = runtime.TCPServer(("127.0.0.1", 0), Echo)
    lifecycle = Runtime(server, handle_signals=False).lifecycle
    admin = AdminServer(("127.0.0.1", 0), lifecycle=lifecycle, render_metrics=broken)
    admin.start()
    try:
        conn = http.client.HTTPConnection(*admin.address, timeout=5)
        conn.request("GET", "/metrics")
        reply = conn.getresponse()
        assert reply.status == 500
        assert b"RuntimeError: a collector failed" in reply.read()
        conn.close()
    finally:
        admin.close()
        server.server_close()
