"""Out of file descriptors: the accept loop backs off, says so once, and recovers at once.

A listener whose ``accept()`` fails with EMFILE stays readable, so a loop that
retries at once spins (measured before: ~330,000 failing accepts a second at
100% CPU, with no log line).  Now: 5 ms doubling to 1 s between tries, one log
line per episode and one when it ends, a retry as soon as a request finishes
(an fd was freed), and ``/livez`` failing if nothing can be accepted for
``liveness_timeout``.
"""

from __future__ import annotations

import errno
import io
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _proc import ROOT, connect, env, poll

import runtime
from runtime import _admission
from runtime.lifecycle import Lifecycle
from runtime.telemetry.logging import make_logger

FAILED_ACCEPTS = "socketserver_errors_total"


class Echo(runtime.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class OutOfFds(runtime.ThreadingTCPServer):
    """``accept()`` fails with EMFILE while ``exhausted`` is set, as it does at the fd limit:
    the connection stays in the kernel's queue and the listener stays readable."""

    exhausted = False
    tries = 0

    def get_request(self) -> Any:
        self.tries += 1
        if self.exhausted:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().get_request()


@pytest.fixture
def server(
    telemetry: runtime.Telemetry, log_stream: io.StringIO, serve: Any
) -> OutOfFds:
    logger = make_logger(fmt="json", stream=log_stream)
    return serve(OutOfFds(("127.0.0.1", 0), Echo, telemetry=telemetry, logger=logger))


def _events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


def test_accept_backs_off_instead_of_spinning_and_logs_once(
    server: OutOfFds,
    log_stream: io.StringIO,
    metric: Callable[..., float],
    wait_for: Callable[..., None],
) -> None:
    server.exhausted = True
    with connect(server.server_address) as waiting:  # queued: the listener stays readable
        wait_for(lambda: server.tries >= 3, what="accept failing")
        time.sleep(1.5)  # the span of time whose failed accepts are counted (a window, not a wait)
        # 5 ms doubling: ~9 tries in 1.5 s.  The old loop retried at once: ~500,000.
        failed = metric(FAILED_ACCEPTS, hook="get_request", error_type="OSError")
        assert 3 <= failed < 50, failed
        (line,) = _events(log_stream, "accept failing; backing off")  # once per episode
        assert line["level"] == "warning" and line["error"] == "EMFILE"
        server.exhausted = False
        waiting.sendall(b"hello\n")
        waiting.settimeout(10)
        assert waiting.makefile("rb").readline() == b"hello\n"  # served once fds are back
    (back,) = _events(log_stream, "accepting again")
    assert back["failures"] == metric(FAILED_ACCEPTS, hook="get_request") and back["seconds"] > 0


def test_a_finished_request_retries_at_once(
    server: OutOfFds, monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., None]
) -> None:
    # A pause far longer than the test: only "a request finished, an fd is free" can end it.
    monkeypatch.setattr(_admission, "BACKOFF_FIRST", 3600.0)
    monkeypatch.setattr(_admission, "BACKOFF_MAX", 3600.0)
    holder = connect(server.server_address)
    holder.sendall(b"one\n")
    assert holder.makefile("rb").readline() == b"one\n"  # in flight, holding its fd
    server.exhausted = True
    with connect(server.server_address) as waiting:
        try:
            wait_for(lambda: server.stalled_for() > 0, what="accept failing")
            server.exhausted = False
        finally:
            holder.close()  # its request finishes: an fd is free
        waiting.sendall(b"two\n")
        waiting.settimeout(10)
        assert waiting.makefile("rb").readline() == b"two\n"


def test_livez_fails_while_nothing_can_be_accepted(
    server: OutOfFds, wait_for: Callable[..., None]
) -> None:
    lifecycle = Lifecycle(liveness_timeout=0.5)
    lifecycle.stall_check = server.stalled_for

    def live() -> bool:
        lifecycle.heartbeat()  # the serving loop turns: only the stall can fail it
        return lifecycle.live()

    assert live()
    server.exhausted = True
    with connect(server.server_address):
        wait_for(lambda: not live(), what="/livez failing")
        server.exhausted = False
        wait_for(live, what="/livez passing again")


@pytest.mark.timeout(120)
def test_a_real_fd_limit_does_not_spin_the_loop() -> None:
    """A real process with RLIMIT_NOFILE 64 and 100 clients holding connections."""
    limit = 64

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "echo", "--bind", "127.0.0.1:0", "--admin",
         "127.0.0.1:0", "--drain-delay", "0", "--no-access-log", "--header-timeout", "none"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lower_limit,
    )  # fmt: skip
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        address = ("127.0.0.1", int(first.rsplit(":", 1)[1]))
        admin = proc.stdout.readline().split()[1]
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()
        for _ in range(100):  # more than the process has fds: the rest wait in the queue
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(b"hi\n")
            clients.append(sock)
        poll(lambda: any("accept failing" in line for line in err), timeout=20,
             what="the backing-off line")  # fmt: skip
        cpu = _cpu_seconds(proc.pid)
        time.sleep(2.0)  # the window whose CPU use is measured (not a synchronisation)
        used = _cpu_seconds(proc.pid) - cpu
        for sock in clients:
            sock.close()
        clients.clear()
        poll(lambda: any("accepting again" in line for line in err), timeout=20,
             what="the recovery line")  # fmt: skip
        with connect(address) as sock:  # serving again
            sock.sendall(b"back\n")
            assert sock.makefile("rb").readline() == b"back\n"
        metrics = _get(admin + "metrics")
        proc.terminate()
        assert proc.wait(30) == 0
        reader.join(10)  # every line it wrote
    finally:
        for sock in clients:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The old loop used a whole core (2 s of CPU in 2 s) and failed ~330,000 accepts a second.
    assert used < 1.0, used
    failed = _sample(metrics, 'socketserver_errors_total{error_type="OSError",hook="get_request"')
    assert 0 < failed < 200, failed
    # Once per episode, not per retry: a line when an episode begins, one with its count when it
    # ends.  (How many episodes depends on the machine: an fd freed now and then, say by the
    # process's own reads of /proc, ends one early and the next failure begins another.)
    events = [json.loads(line) for line in err if line.startswith("{")]
    began = [e for e in events if e["event"].startswith("accept failing")]
    ended = [e for e in events if e["event"] == "accepting again"]
    assert len(began) == len(ended) >= 1, (began, ended)
    assert sum(e["failures"] for e in ended) == failed  # each failure in one episode's count


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(_clock_ticks())


def _clock_ticks() -> int:
    import os

    return os.sysconf("SC_CLK_TCK")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:
        return str(reply.read().decode())


def _sample(text: str, prefix: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total
