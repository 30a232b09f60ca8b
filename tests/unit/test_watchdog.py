"""The watchdog: slow requests logged once with their own stack, timeouts enforced, SIGUSR1 dump."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _proc import RuntimeProcess, connect, poll

import runtime
from runtime.lifecycle import Runtime
from runtime.telemetry.logging import make_logger
from runtime.watchdog import Watchdog

release = threading.Event()


def _stuck_here() -> None:
    release.wait(20)


class Stuck(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        _stuck_here()
        self.wfile.write(b"done\n")


class Reads(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"ack\n")
        self.rfile.readline()  # blocks: the client never sends


class Stack:
    def __init__(self, handler: type, **watch: float) -> None:
        self.log = io.StringIO()
        self.telemetry = runtime.Telemetry()
        self.server = runtime.ThreadingTCPServer(
            ("127.0.0.1", 0), handler, telemetry=self.telemetry,
            logger=make_logger(fmt="json", stream=self.log), server_name="w",
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()
        self.watchdog = Watchdog(self.server, **watch)  # type: ignore[arg-type]
        self.watchdog.start()

    def lines(self, event: str) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [line for line in found if line["event"] == event]

    def metric(self, name: str, **labels: str) -> float:
        value = self.telemetry.registry.get_sample_value(
            name, {"server": "w", "transport": "tcp", **labels}
        )
        return value or 0.0

    def close(self) -> None:
        release.set()
        self.watchdog.stop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def stack_factory() -> Iterator[Any]:
    made: list[Stack] = []
    release.clear()

    def make(handler: type, **watch: float) -> Stack:
        made.append(Stack(handler, **watch))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.mark.timeout(30)
def test_slow_request_is_logged_once_with_its_own_stack(stack_factory: Any) -> None:
    s = stack_factory(Stuck, warn_after=0.1)
    with socket.create_connection(s.server.server_address, timeout=10) as sock:
        sock.sendall(b"go\n")
        poll(lambda: s.lines("slow request"), what="the slow-request line")
        for _ in range(3):
            s.watchdog.check()  # more checks while it is still running: still one line
        (line,) = s.lines("slow request")
        assert line["age_s"] >= 0.1 and line["warn_after"] == 0.1
        assert any("_stuck_here" in frame for frame in line["stack"])
        # That request's thread only: the serving loop's frames are not in it.
        assert not any("serve_forever" in frame for frame in line["stack"])
        assert s.metric("socketserver_requests_slow_total") == 1
        release.set()
        assert sock.makefile("rb").readline() == b"done\n"


@pytest.mark.timeout(30)
def test_thread_mode_timeout_cuts_the_connection(stack_factory: Any) -> None:
    s = stack_factory(Reads, timeout=0.2)
    with socket.create_connection(s.server.server_address, timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"ack\n"
        assert reader.readline() == b""  # the server shut the connection down
    poll(
        lambda: s.metric("socketserver_requests_total", outcome="timed_out") == 1, what="timed_out"
    )
    assert s.metric("socketserver_requests_total", outcome="error") == 0  # not a handler error
    assert s.metric("socketserver_requests_timed_out_total") == 1
    assert s.metric("socketserver_errors_total", hook="watchdog", error_type="RequestTimeout") == 1
    # Logged by the watchdog after it cut the connection: the reply's end may come first.
    poll(lambda: s.lines("request timed out"), what="the timed-out line")
    (line,) = s.lines("request timed out")
    assert line["action"] == "connection shut down" and line["timeout"] == 0.2


@pytest.mark.timeout(30)
def test_state_dump_lists_requests_in_flight_with_their_ages(stack_factory: Any) -> None:
    s = stack_factory(Reads)
    rt = Runtime(s.server, handle_signals=False)
    rt.unit.watchdog = s.watchdog
    socks = [socket.create_connection(s.server.server_address, timeout=10) for _ in range(2)]
    try:
        for sock in socks:
            assert sock.recv(4) == b"ack\n"
        rt.handle_signal(signal.SIGUSR1)  # what the SIGUSR1 handler does
        poll(lambda: s.lines("state"), what="the state line")
        (line,) = s.lines("state")
        assert line["in_flight"] == 2
        assert len(line["requests"]) == 2 and all(r["age_s"] >= 0 for r in line["requests"])
        assert line["pool"]["workers_busy"] == 2
        assert not rt.lifecycle.stop_requested  # a dump is not a stop
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.timeout(60)
def test_fork_mode_timeout_kills_the_child_and_sigusr1_does_not_stop() -> None:
    rt = RuntimeProcess(
        "handlers:HoldHandler", "--mode", "fork", "--request-timeout", "0.5", "--drain-delay", "0"
    )
    try:
        sock = connect(rt.address)
        sock.sendall(b"hold\n")
        reader = sock.makefile("rb")
        assert reader.readline() == b"ack\n"
        assert reader.readline() == b""  # the child was killed
        sock.close()
        rt.signal(signal.SIGUSR1)
        other = connect(rt.address)  # still serving after SIGUSR1
        other.sendall(b"hold\ngo\n")
        assert other.makefile("rb").read() == b"ack\ndone\n"
        other.close()

        def metric(text: str) -> bool:
            return text in rt.get("/metrics")[2]

        poll(lambda: metric('socketserver_requests_timed_out_total{server="HoldHandler",'
                            'transport="tcp"} 1.0'), what="timed out count")  # fmt: skip
        # Counted when the killed child is reaped, a moment after the watchdog acted.
        poll(lambda: metric('error_type="RequestTimeout"'), what="the timed-out request finished")
        body = rt.get("/metrics")[2]
        assert 'socketserver_children_reaped_total{server="HoldHandler",status="signal"' in body
        rt.signal(signal.SIGTERM)
        code, err = rt.wait()
        assert code == 0
    finally:
        rt.close()
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (timed_out,) = [e for e in events if e["event"] == "request timed out"]
    assert timed_out["action"] == "killed child" and timed_out["pid"] > 0
    assert any(e["event"] == "state" for e in events)
