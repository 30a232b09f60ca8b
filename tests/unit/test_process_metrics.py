"""process_* metrics: read from psutil at scrape time; fork children counted, not scanned."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import runtime


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_process_metrics_describe_this_process() -> None:
    telemetry = runtime.Telemetry()
    registry = telemetry.registry
    before = _value(registry, "process_cpu_seconds_total")
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU so the counter must move
        pass
    assert _value(registry, "process_cpu_seconds_total") > before
    fds = len(os.listdir("/proc/self/fd"))
    assert abs(_value(registry, "process_open_fds") - fds) <= 2
    assert _value(registry, "process_resident_memory_bytes") > 10_000_000
    assert _value(registry, "process_threads") >= threading.active_count()
    assert _value(registry, "process_context_switches_total", kind="voluntary") >= 0
    assert abs(_value(registry, "process_start_time_seconds") - time.time()) < 24 * 3600
    assert _value(registry, "process_max_fds") > 0


def test_two_telemetries_and_the_global_registry_do_not_collide() -> None:
    runtime.Telemetry()
    runtime.Telemetry()
    runtime.Telemetry(registry=REGISTRY)  # it has prometheus_client's own process_* already


class _Hold(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"ack\n")
        self.rfile.readline()  # until the client half-closes


@pytest.fixture
def fork_server() -> Iterator[runtime.ForkingTCPServer]:
    server = runtime.ForkingTCPServer(
        ("127.0.0.1", 0), _Hold, telemetry=runtime.Telemetry(), server_name="forked"
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.timeout(30)
def test_fork_mode_counts_live_children_and_their_memory(
    fork_server: runtime.ForkingTCPServer,
) -> None:
    registry = fork_server.telemetry.registry  # type: ignore[union-attr]
    assert _value(registry, "process_children") == 0
    clients = []
    for _ in range(3):
        sock = socket.create_connection(fork_server.server_address, timeout=10)
        assert sock.recv(4) == b"ack\n"  # its child is running now
        clients.append(sock)
    assert _value(registry, "process_children") == 3
    assert _value(registry, "process_children_resident_memory_bytes") > 3 * 1_000_000
    for sock in clients:
        sock.shutdown(socket.SHUT_WR)  # children see EOF and exit
        sock.recv(1)
        sock.close()
    deadline = time.monotonic() + 10
    while _value(registry, "process_children") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _value(registry, "process_children") == 0


class _Quick(runtime.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@pytest.mark.timeout(30)
def test_fork_children_are_reaped_when_they_exit_not_a_poll_interval_later() -> None:
    server = runtime.ForkingTCPServer(("127.0.0.1", 0), _Quick, telemetry=runtime.Telemetry())
    registry = server.telemetry.registry  # type: ignore[union-attr]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 30})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"x\n")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(2) == b"x\n"
        labels = {"server": "ForkingTCPServer", "transport": "tcp", "outcome": "ok"}
        deadline = time.monotonic() + 5  # far less than the 30 s poll interval
        while registry.get_sample_value("socketserver_requests_total", labels) != 1.0:
            assert time.monotonic() < deadline, "the child was not reaped when it exited"
            time.sleep(0.01)
        assert server.child_pids() == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
