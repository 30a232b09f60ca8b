"""Bounded pools (runtime/pools.py): reused worker threads and a ceiling on forked children.

Forking servers run in a separate process (a small script driven over stdin/stdout):
a forking server inside the test process would copy the test's own client sockets
into every child, and connections would not see end-of-file when the test closes them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import pytest

import runtime

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
Metric = Callable[..., float]
WaitFor = Callable[..., None]
REQUESTS = "socketserver_requests_total"
HOOK_COUNT = "socketserver_hook_duration_seconds_count"


class ConcurrencyProbe:
    """Counts handlers running at once; the first ``target`` wait until all are in.

    Waiting for the target proves the pool really ran that many at once
    (without it, fast handlers could pass a ceiling test by never overlapping).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.running = 0
        self.peak = 0
        self.reached = threading.Event()
        self.lock = threading.Lock()

    def __enter__(self) -> ConcurrencyProbe:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running >= self.target:
                self.reached.set()
        self.reached.wait(15)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self.lock:
            self.running -= 1


def line_request(address: Any, line: bytes, timeout: float = 20.0) -> bytes:
    """Send one line on a new connection and return the reply line (b"" when closed)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        try:  # a rejected connection may be reset before or after we write
            sock.sendall(line + b"\n")
            with sock.makefile("rb") as reader:
                return reader.readline()
        except (ConnectionResetError, BrokenPipeError):
            return b""


# -- threads ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_flood_never_runs_more_than_max_children_handlers_and_reuses_threads(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    max_children, connections, clients = 8, 2000, 64
    probe = ConcurrencyProbe(target=max_children)
    handler_threads: set[int] = set()
    active_peak = [0]

    class Handler(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            with probe:
                handler_threads.add(threading.get_ident())
                active_peak[0] = max(active_peak[0], threading.active_count())
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        request_queue_size = 256  # a deep kernel backlog: the test measures the pool

    Server.max_children = max_children
    server = serve(Server(("127.0.0.1", 0), Handler, telemetry=telemetry, server_name="flood"))
    baseline = threading.active_count()

    def one(n: int) -> bytes:
        return line_request(server.server_address, b"request %d" % n)

    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(one, range(connections)))
    assert replies == [b"request %d\n" % n for n in range(connections)]
    assert probe.peak <= max_children, "more handlers ran at once than max_children"
    assert probe.peak == max_children, "the pool never ran max_children handlers at once"
    # 2000 requests on at most 8 threads: workers are reused, not one per request
    assert len(handler_threads) <= max_children
    assert active_peak[0] <= baseline + clients + max_children
    wait_for(lambda: metric(REQUESTS, outcome="ok") == connections, what="all requests counted")
    assert metric("socketserver_queue_wait_seconds_count") == connections
    assert metric("socketserver_workers_max") == max_children


def test_idle_workers_retire_after_idle_timeout(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    probe = ConcurrencyProbe(target=4)
    workers: list[threading.Thread] = []

    class Handler(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            with probe:
                workers.append(threading.current_thread())
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        max_children = 4
        idle_timeout = 0.2

    server = serve(Server(("127.0.0.1", 0), Handler, telemetry=telemetry))
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda n: line_request(server.server_address, b"%d" % n), range(4)))
    assert sorted(replies) == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert probe.peak == 4
    # all four workers exist now; with nothing to do they retire
    wait_for(lambda: not any(t.is_alive() for t in workers), timeout=10, what="workers retired")
    wait_for(lambda: metric("socketserver_workers") == 0, timeout=5, what="worker gauges at 0")
    # and the pool starts a new worker on demand
    assert line_request(server.server_address, b"again") == b"again\n"
    assert workers[-1] not in workers[:4]


@pytest.mark.timeout(90)
def test_64_long_lived_connections_are_served_at_once_by_default(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    clients, trips = 64, 5
    running, peak, lock = [0], [0], threading.Lock()

    class KeepAlive(runtime.StreamRequestHandler):
        def handle(self) -> None:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            try:
                for line in self.rfile:  # until the client closes
                    self.wfile.write(line)
            finally:
                with lock:
                    running[0] -= 1

    class Server(runtime.ThreadingTCPServer):
        request_queue_size = 128  # 64 clients connect at once: no SYN retries, please

    server = serve(Server(("127.0.0.1", 0), KeepAlive, telemetry=telemetry))
    assert server.max_children == runtime.ThreadingTCPServer.max_children  # the default
    # Every client gets its first answer, then holds its connection open until all
    # 64 have been answered: only a server running 64 handlers at once gets past this.
    everyone_answered = threading.Barrier(clients, timeout=30)
    answers: list[list[bytes]] = []
    failures: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with socket.create_connection(server.server_address, timeout=30) as sock:
                reader = sock.makefile("rb")
                got = []
                for trip in range(trips):
                    sock.sendall(b"client %d trip %d\n" % (n, trip))
                    got.append(reader.readline())
                    if trip == 0:
                        everyone_answered.wait()
                reader.close()
                answers.append(got)
        except BaseException as exc:
            failures.append(exc)
            everyone_answered.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    assert len(answers) == clients
    assert all(len(a) == trips and all(a) for a in answers)
    assert peak[0] == clients
    wait_for(lambda: metric(REQUESTS, outcome="ok") == clients, what="64 connections finished")


def test_reject_policy_closes_the_connection_and_calls_handle_overload(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    started, release = threading.Event(), threading.Event()
    overloaded: list[Any] = []

    class Blocking(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            started.set()
            release.wait(20)
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        max_children = 1
        queue_size = 0
        overload = "reject"

        def handle_overload(self, request: Any, client_address: Any) -> None:
            overloaded.append(client_address)

    server = serve(Server(("127.0.0.1", 0), Blocking, telemetry=telemetry))
    try:
        with socket.create_connection(server.server_address, timeout=20) as first:
            first.sendall(b"first\n")
            assert started.wait(10)
            with socket.create_connection(server.server_address, timeout=20) as second:
                port = second.getsockname()[1]
                second.sendall(b"second\n")
                try:
                    assert second.recv(100) == b""  # closed at once, not queued
                except ConnectionResetError:
                    pass
            wait_for(lambda: metric("socketserver_requests_rejected_total") == 1, what="reject")
            assert metric("socketserver_requests_rejected_total", reason="overload") == 1
            assert overloaded == [("127.0.0.1", port)]
            release.set()
            assert first.makefile("rb").readline() == b"first\n"
    finally:
        release.set()
    wait_for(lambda: metric(REQUESTS) == 2, what="2 requests")
    assert metric(REQUESTS, outcome="rejected") == 1
    assert metric(REQUESTS, outcome="ok") == 1


def test_handle_overload_that_raises_does_not_stop_the_server(
    telemetry: runtime.Telemetry, json_logger: Any, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    started, release = threading.Event(), threading.Event()

    class Blocking(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line.startswith(b"block"):
                started.set()
                release.wait(20)
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        max_children = 1
        queue_size = 0
        overload = "reject"

        def handle_overload(self, request: Any, client_address: Any) -> None:
            raise RuntimeError("could not send the busy page")

    server = Server(("127.0.0.1", 0), Blocking, telemetry=telemetry, logger=json_logger)
    loop_errors: list[BaseException] = []

    def serve_forever() -> None:
        try:
            server.serve_forever(0.05)
        except BaseException as exc:
            loop_errors.append(exc)

    loop = threading.Thread(target=serve_forever, daemon=True)
    loop.start()
    try:
        with socket.create_connection(server.server_address, timeout=20) as first:
            first.sendall(b"block\n")
            assert started.wait(10)
            assert line_request(server.server_address, b"rejected") == b""
            wait_for(lambda: metric("socketserver_requests_rejected_total") == 1, what="reject")
            release.set()
            assert first.makefile("rb").readline() == b"block\n"
        assert not loop_errors, loop_errors
        # One worker, no queue, reject policy: wait until it is free again.
        wait_for(lambda: server.runtime_stats()["workers_busy"] == 0, what="worker idle")
        assert line_request(server.server_address, b"after", timeout=5) == b"after\n"
        assert metric("socketserver_errors_total", error_type="RuntimeError") == 1
    finally:
        release.set()
        if loop.is_alive():
            server.shutdown()
        loop.join(10)
        server.server_close()


def _gauge(metric: Metric, name: str, **labels: str) -> float:
    return metric(f"socketserver_{name}", **labels)


def test_wait_policy_applies_backpressure_and_gauges_read_live(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    release = threading.Event()

    class Blocking(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            release.wait(20)
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        max_children = 2
        queue_size = 2
        overload = "wait"

    server = serve(Server(("127.0.0.1", 0), Blocking, telemetry=telemetry))
    socks = []
    try:
        for n in range(6):
            sock = socket.create_connection(server.server_address, timeout=20)
            sock.sendall(b"%d\n" % n)
            socks.append(sock)
        # 2 running, 2 queued, 1 taken by the accept loop that now waits for room;
        # the 6th stays in the kernel's backlog.
        wait_for(lambda: _gauge(metric, "queue_depth") == 2, what="queue full")
        wait_for(lambda: _gauge(metric, "requests_in_flight") == 5, what="5 in flight")
        assert _gauge(metric, "workers", state="busy") == 2
        assert _gauge(metric, "workers", state="idle") == 0
        assert _gauge(metric, "workers_max") == 2
        assert metric(HOOK_COUNT, hook="get_request") == 5  # the loop stopped accepting
        assert metric(REQUESTS) == 0
        release.set()
        replies = [s.makefile("rb").readline() for s in socks]
        assert replies == [b"%d\n" % n for n in range(6)]
    finally:
        release.set()
        for s in socks:
            s.close()
    wait_for(lambda: metric(REQUESTS, outcome="ok") == 6, what="all 6 done")
    assert metric("socketserver_queue_wait_seconds_count") == 6
    assert metric("socketserver_requests_rejected_total") == 0
    wait_for(lambda: _gauge(metric, "requests_in_flight") == 0, what="nothing in flight")
    assert _gauge(metric, "queue_depth") == 0
    # A worker counts itself idle just after its request left in-flight: wait for it.
    wait_for(lambda: _gauge(metric, "workers", state="busy") == 0, what="no worker busy")
    assert _gauge(metric, "workers", state="idle") == 2  # kept for reuse


def test_wait_policy_without_a_queue_hands_over_as_soon_as_a_worker_is_free(
    telemetry: runtime.Telemetry, serve: Any, metric: Metric, wait_for: WaitFor
) -> None:
    release = threading.Event()

    class Blocking(runtime.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line.startswith(b"block"):
                release.wait(20)
            self.wfile.write(line)

    class Server(runtime.ThreadingTCPServer):
        max_children = 1
        queue_size = 0
        overload = "wait"

    server = serve(Server(("127.0.0.1", 0), Blocking, telemetry=telemetry))
    with socket.create_connection(server.server_address, timeout=20) as first, \
            socket.create_connection(server.server_address, timeout=20) as second:  # fmt: skip
        first.sendall(b"block\n")
        second.sendall(b"quick\n")
        # the accept loop has taken the second connection and waits for the worker
        wait_for(lambda: _gauge(metric, "requests_in_flight") == 2, what="2 in flight")
        release.set()
        assert first.makefile("rb").readline() == b"block\n"
        freed = time.monotonic()
        assert second.makefile("rb").readline() == b"quick\n"
        handover = time.monotonic() - freed
    assert handover < 0.5, f"the free worker got the next request only after {handover:.2f}s"


# -- forking (in a separate process) ---------------------------------------------------

FORK_SERVER = r'''
import json
import multiprocessing
import os
import sys
import threading

import psutil
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import runtime
from runtime.telemetry.logging import make_logger

CONFIG = json.loads(sys.argv[1])
MAX = CONFIG["max_children"]
fork = multiprocessing.get_context("fork")
lock = fork.Lock()
running, peak, live_peak, entered = (fork.RawValue("i", 0) for _ in range(4))
all_in = fork.Barrier(MAX, timeout=20)


class Handler(runtime.StreamRequestHandler):
    def handle(self):
        command = self.rfile.readline().strip()
        if command == b"probe":
            with lock:
                running.value += 1
                peak.value = max(peak.value, running.value)
                entered.value += 1
                first = entered.value <= MAX
            # the server's children not reaped yet (zombies included), this one too
            live = len(psutil.Process(os.getppid()).children())
            with lock:
                live_peak.value = max(live_peak.value, live)
            if first:
                all_in.wait()  # the first MAX children must all be alive at once
            with lock:
                running.value -= 1
        elif command == b"hang":
            self.wfile.write(b"%d\n" % os.getpid())
            self.wfile.flush()
            self.rfile.read()  # until the client goes away or we are killed
            return
        elif command == b"boom":
            raise ValueError("boom in a child")
        self.wfile.write(command + b"\n")


class Server(runtime.ForkingTCPServer):
    max_children = MAX
    request_queue_size = 128


exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
registry = CollectorRegistry()
server = Server(
    ("127.0.0.1", 0), Handler,
    telemetry=runtime.Telemetry(
        registry=registry, tracer_provider=provider if CONFIG["tracing"] else None
    ),
    logger=make_logger(fmt="json", stream=sys.stderr),
)
thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
thread.start()


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


reply({"port": server.server_address[1], "pid": os.getpid()})
for line in sys.stdin:
    command = line.strip()
    if command == "samples":
        reply([[s.name, s.labels, s.value] for f in registry.collect() for s in f.samples])
    elif command == "probe":
        reply({"peak": peak.value, "live_peak": live_peak.value})
    elif command == "spans":
        reply([
            {"name": s.name, "events": [e.name for e in s.events],
             "status": s.status.status_code.name}
            for s in exporter.get_finished_spans() if s.kind.name == "SERVER"
        ])
    elif command == "quit":
        break
server.shutdown()
server.server_close()
reply("bye")
'''


class ForkServer:
    """A ``runtime.ForkingTCPServer`` in its own process, queried over stdin/stdout."""

    def __init__(self, workdir: Path, max_children: int, tracing: bool = True) -> None:
        script = workdir / "fork_server.py"
        script.write_text(FORK_SERVER)
        self.stderr_path = workdir / "fork_server.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                json.dumps({"max_children": max_children, "tracing": tracing}),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # its own process group: teardown can end its children too
        )
        hello = self._read()
        self.pid: int = hello["pid"]
        self.address = ("127.0.0.1", int(hello["port"]))

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"fork server exited: {self.stderr_path.read_text()[-2000:]}")
        return json.loads(line)

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def metric(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self.ask("samples")
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                assert self.ask("quit") == "bye"
                self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group we started, by its id
                self.proc.wait(10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[Callable[..., ForkServer]]:
    """``fork_server(max_children, tracing=True)`` starts one; teardown stops it."""
    started: list[ForkServer] = []

    def start(max_children: int, tracing: bool = True) -> ForkServer:
        server = ForkServer(tmp_path, max_children, tracing)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def test_fork_never_more_than_max_children_live(
    fork_server: Callable[..., ForkServer], wait_for: WaitFor
) -> None:
    max_children, requests = 4, 48
    server = fork_server(max_children)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: line_request(server.address, b"probe"), range(requests)))
    assert replies == [b"probe\n"] * requests
    probe = server.ask("probe")
    assert probe["peak"] == max_children  # children really ran side by side...
    assert 1 <= probe["live_peak"] <= max_children  # ...and never more were alive
    wait_for(
        lambda: server.metric("socketserver_children_reaped_total", status="ok") == requests,
        what="all children reaped",
    )
    assert server.metric("socketserver_workers_max") == max_children
    assert server.metric("socketserver_workers", state="busy") == 0
    # requests waited for a free slot while the first children were held: measured
    assert server.metric("socketserver_queue_wait_seconds_count") >= 1


def test_fork_child_hook_timings_reach_the_parent(
    fork_server: Callable[..., ForkServer], wait_for: WaitFor
) -> None:
    server = fork_server(4)
    for n in range(10):
        assert line_request(server.address, b"hello %d" % n) == b"hello %d\n" % n
    assert line_request(server.address, b"boom") == b""
    wait_for(lambda: server.metric(REQUESTS) == 11, what="11 requests")
    for hook in ("finish_request", "setup", "handle", "finish", "shutdown_request"):
        assert server.metric(HOOK_COUNT, hook=hook) == 11, hook
    assert server.metric(HOOK_COUNT, hook="handle_error") == 1
    assert server.metric(REQUESTS, outcome="ok") == 10
    assert server.metric(REQUESTS, outcome="error") == 1
    assert server.metric("socketserver_errors_total", hook="handle", error_type="ValueError") == 1
    assert server.metric("socketserver_children_reaped_total", status="ok") == 10
    assert server.metric("socketserver_children_reaped_total", status="error") == 1
    spans = server.ask("spans")
    assert len(spans) == 11
    assert all("handle" in s["events"] and "setup" in s["events"] for s in spans)
    assert sorted(s["status"] for s in spans).count("ERROR") == 1


def test_fork_child_killed_by_sigkill_is_counted(
    fork_server: Callable[..., ForkServer], wait_for: WaitFor
) -> None:
    server = fork_server(4)
    with socket.create_connection(server.address, timeout=20) as sock:
        sock.sendall(b"hang\n")
        reader = sock.makefile("rb")
        child = int(reader.readline())
        assert psutil.Process(child).ppid() == server.pid
        os.kill(child, signal.SIGKILL)
        assert reader.readline() == b""  # the kernel closed the killed child's connection
        reader.close()
    wait_for(
        lambda: server.metric("socketserver_children_reaped_total", status="signal") == 1,
        what="killed child reaped",
    )
    assert server.metric("socketserver_errors_total", error_type="SIGKILL") == 1
    assert server.metric(REQUESTS, outcome="error") == 1
    assert line_request(server.address, b"still serving") == b"still serving\n"
    wait_for(lambda: server.metric(REQUESTS, outcome="ok") == 1, what="next request")
    assert not psutil.pid_exists(child) or psutil.Process(child).ppid() != server.pid


@pytest.mark.timeout(150)
def test_fork_many_requests_leave_open_fds_bounded(
    fork_server: Callable[..., ForkServer], wait_for: WaitFor
) -> None:
    max_children, requests, warmup = 8, 10_000, 16
    # No tracing here: the in-memory exporter would keep 10,000 spans and every
    # fork would copy an ever larger parent.
    server = fork_server(max_children, tracing=False)
    for n in range(warmup):  # lazily created state (child selector, label children)
        line_request(server.address, b"warm %d" % n)
    reaped = "socketserver_children_reaped_total"
    wait_for(lambda: server.metric(reaped) == warmup, what="warm-up reaped")
    before = server.open_fds()

    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.open_fds())
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_children) as pool:
            replies = pool.map(lambda _: line_request(server.address, b"ok"), range(requests))
            ok = sum(reply == b"ok\n" for reply in replies)
    finally:
        done.set()
        watcher.join(5)
    assert ok == requests
    wait_for(lambda: server.metric(reaped) == warmup + requests, timeout=30, what="all reaped")
    after = server.open_fds()
    # per live child the parent holds one pipe end, plus an accepted socket and a new
    # pipe around a fork: anything beyond that would be a leak
    assert peak[0] <= before + max_children + 3, (before, peak[0])
    assert after <= before + max_children, (before, after)
    assert after == before, f"{after - before} fds leaked over {requests} requests"
