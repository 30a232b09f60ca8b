"""A drain ends idle keep-alive connections at once, and cuts nothing already read.

Behind a pooling proxy every pod has idle keep-alive connections.  A drain that
waited for them until ``graceful_timeout`` and then counted them as forced would
take the whole grace period and exit 1 every time.  Here: HTTP responses during
the drain say ``Connection: close``; when the listener closes, connections idle
between requests are closed; a request in progress is finished; exit 0.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from typing import Any

import pytest
from _proc import RuntimeProcess, connect, poll

import runtime
from runtime.lifecycle import Runtime

MODES = {
    "thread": (),
    "fork": ("--mode", "fork"),
    "prefork": ("--mode", "prefork", "--workers", "2", "--threads", "32"),
}


def _keepalive(address: tuple[str, int], path: str = "/") -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", path)
    reply = conn.getresponse()
    assert reply.status == 200 and reply.read() == f"{path}\n".encode()
    assert reply.getheader("Connection") is None  # kept alive while serving
    return conn


def _closed_by_server(conn: http.client.HTTPConnection) -> bool:
    sock = conn.sock
    assert sock is not None
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", list(MODES))
def test_idle_keepalive_clients_do_not_hold_the_drain(mode: str) -> None:
    rt = RuntimeProcess(
        "handlers:SlowHTTPHandler", "--drain-delay", "1", "--graceful-timeout", "30",
        *MODES[mode],
    )  # fmt: skip
    try:
        poll(rt.ready, timeout=20, what="ready")
        idle = [_keepalive(rt.address) for _ in range(20)]
        # Active clients: keep-alive requests back to back until a response says
        # Connection: close; every request they send must get its whole response.
        told: list[str] = []
        errors: list[str] = []

        def active() -> None:
            conn = _keepalive(rt.address)
            try:
                for _ in range(100_000):
                    conn.request("GET", "/busy")
                    reply = conn.getresponse()
                    assert reply.read() == b"/busy\n"
                    if reply.getheader("Connection") == "close":
                        told.append("close")
                        return
            except Exception as exc:  # reported below
                errors.append(repr(exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=active) for _ in range(8)]
        for t in threads:
            t.start()
        slow = _keepalive(rt.address)
        poll(lambda: rt.metric("socketserver_requests_in_flight") >= 29, what="29 connections")
        started = time.monotonic()
        rt.signal(signal.SIGTERM)
        poll(lambda: not rt.ready(), what="readiness failing")
        slow.request("GET", "/slow")  # in the drain delay: in progress when the listener closes
        for t in threads:
            t.join(30)
        code, err = rt.wait(60)
        took = time.monotonic() - started
        reply = slow.getresponse()
        assert reply.status == 200 and reply.read() == b"/slow\n"  # read before: not cut
        assert reply.getheader("Connection") == "close"
    finally:
        rt.close()
    assert errors == []
    assert told == ["close"] * 8  # each active client was told, none was cut
    assert all(_closed_by_server(conn) for conn in idle)
    assert code == 0, err[-3000:]
    assert '"forced requests"' not in err
    # The old drain waited the whole graceful timeout (30 s) for the idle clients.
    assert took < 15, took


class LineEcho(runtime.StreamRequestHandler):
    """A line protocol that hears about the drain: it finishes the current line and closes."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"slow\n":
                time.sleep(0.5)
            self.wfile.write(line)

    def handle_drain(self) -> None:
        self.request.shutdown(socket.SHUT_RD)


class NoDrainHook(LineEcho):
    handle_drain = None  # type: ignore[assignment]


def _serve(handler: type, **options: Any) -> tuple[Any, Runtime, threading.Thread, list[int]]:
    server = runtime.ThreadingTCPServer(("127.0.0.1", 0), handler)
    rt = Runtime(server, handle_signals=False, **options)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(rt.run()))
    thread.start()
    poll(lambda: rt.lifecycle.ready(), what="serving")
    return server, rt, thread, status


@pytest.mark.timeout(60)
def test_a_line_protocol_with_handle_drain_finishes_its_command_and_closes() -> None:
    server, rt, thread, status = _serve(LineEcho, drain_delay=0, graceful_timeout=30)
    idle = [connect(server.server_address) for _ in range(5)]
    for sock in idle:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"hi\n"
    busy = connect(server.server_address)
    busy.sendall(b"slow\n")
    poll(lambda: len(server.runtime_stats()) and server.runtime_stats()["in_flight"] == 6,
         what="6 in flight")  # fmt: skip
    started = time.monotonic()
    rt.stop()
    thread.join(30)
    assert status == [0]
    assert time.monotonic() - started < 10  # not the 30 s graceful timeout
    assert busy.makefile("rb").read() == b"slow\n"  # the command in progress, then EOF
    for sock in [*idle, busy]:
        sock.close()


@pytest.mark.timeout(60)
def test_without_a_drain_hook_a_connection_is_forced_after_the_graceful_timeout() -> None:
    # Documented: the runtime cannot know where another protocol's requests end.
    server, rt, thread, status = _serve(NoDrainHook, drain_delay=0, graceful_timeout=0.5)
    sock = connect(server.server_address)
    sock.sendall(b"hi\n")
    assert sock.makefile("rb").readline() == b"hi\n"
    rt.stop()
    thread.join(30)
    assert status == [1]
    sock.close()
