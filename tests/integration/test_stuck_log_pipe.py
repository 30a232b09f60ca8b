"""A log reader that stops reading never stalls serving (real processes).

``python -m runtime`` runs with stderr connected to a pipe the test does not
read (a stuck log shipper, a paused ``docker logs``), the access log on, and
gets far more than the pipe's 64 KiB of access lines.  Before the fix every
worker thread blocked writing its access line after a few hundred requests,
and SIGTERM could not finish.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _proc import ROOT, env, poll

#: Generous bounds for a busy 2-core machine: failures come from blocking, not slowness.
ANSWER_TIMEOUT = 10.0
FLOOD_SECONDS = 120.0
EXIT_SECONDS = 20.0


class StuckLogProcess:
    """``python -m runtime ARGS`` whose stderr is a pipe the test reads only when it says so."""

    def __init__(self, *args: str) -> None:
        read_end, write_end = os.pipe()
        cmd = [sys.executable, "-m", "runtime", *args, "--bind", "127.0.0.1:0",
               "--admin", "127.0.0.1:0", "--drain-delay", "0", "--log-format", "json"]  # fmt: skip
        self.log = read_end
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=write_end, text=True
        )
        os.close(write_end)  # the children hold the only write ends: EOF once they exit
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        found = re.search(r"on tcp://([\d.]+):(\d+)", first)
        admin = re.search(r"admin (http://[\d.]+:\d+)/", second)
        if not found or not admin:
            self.close()
            raise AssertionError(f"no addresses in {first!r} {second!r}")
        self.address = (found.group(1), int(found.group(2)))
        self.admin = admin.group(1)
        # stdout is read to its end (it gets nothing more); stderr is not read at all.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=ANSWER_TIMEOUT) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def dropped(self) -> float:
        """``socketserver_telemetry_dropped_total{what="log_lines"}`` on /metrics."""
        text = self.get("/metrics")[1]
        found = re.search(r'^socketserver_telemetry_dropped_total\{what="log_lines"\} (\S+)$',
                          text, re.MULTILINE)  # fmt: skip
        assert found, "no log_lines sample on /metrics"
        return float(found.group(1))

    def start_reading(self) -> None:
        """The log reader comes back: read stderr from now on."""

        def read() -> None:
            with os.fdopen(self.log, "r", errors="replace") as stream:
                for line in stream:
                    self._lines.append(line)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def log_lines(self) -> list[str]:
        return list(self._lines)

    def wait_read_all(self) -> list[str]:
        assert self._reader is not None
        self._reader.join(EXIT_SECONDS)
        assert not self._reader.is_alive(), "stderr did not reach its end"
        return list(self._lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # (and its pre-fork workers see their supervisor gone)
            self.proc.wait(10)
        if self._reader is None:  # nobody reads: let the workers' writes fail, not block
            os.close(self.log)


@pytest.fixture
def started() -> Iterator[list[StuckLogProcess]]:
    running: list[StuckLogProcess] = []
    yield running
    for proc in running:
        proc.close()


def _echo_once(address: tuple[str, int], n: int) -> None:
    with socket.create_connection(address, timeout=ANSWER_TIMEOUT) as sock:
        payload = b"%d\n" % n
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        assert got == payload


def _http_once(address: tuple[str, int], _n: int) -> None:
    # A connection per request: one access line each whatever the HTTP layer logs.
    conn = http.client.HTTPConnection(*address, timeout=ANSWER_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        reply = conn.getresponse()
        assert (reply.status, reply.read()) == (200, b"hello, world\n")
    finally:
        conn.close()


def _flood(rt: StuckLogProcess, handler: str, requests: int) -> None:
    """*requests* requests from 4 clients, each answered within ANSWER_TIMEOUT."""
    once = _echo_once if handler == "echo" else _http_once
    pool = ThreadPoolExecutor(4)
    try:
        jobs = [pool.submit(once, rt.address, n) for n in range(requests)]
        for job in jobs:
            job.result(timeout=FLOOD_SECONDS)
    finally:  # on the first failure, not thousands of time-outs more
        pool.shutdown(wait=True, cancel_futures=True)


def _json_lines(lines: list[str]) -> list[dict[str, Any]]:
    """Every line parsed: a torn or interleaved line fails the test here."""
    return [json.loads(line) for line in lines]


CASES = [
    pytest.param("echo", (), 3000, id="echo-thread"),
    pytest.param("http_hello", (), 3000, id="http-thread"),
    # Each worker buffers up to 256 KiB of its own: more lines to overflow both.
    pytest.param("echo", ("--mode", "prefork", "--workers", "2"), 6000, id="echo-prefork"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("handler", "mode", "requests"), CASES)
def test_serving_probes_and_sigterm_go_on_while_nobody_reads_the_log(
    started: list[StuckLogProcess], handler: str, mode: tuple[str, ...], requests: int
) -> None:
    rt = StuckLogProcess(handler, *mode)
    started.append(rt)
    _flood(rt, handler, requests)  # far more than 64 KiB of access lines
    assert rt.get("/livez")[0] == 200
    assert rt.get("/readyz")[0] == 200
    poll(lambda: rt.dropped() > 0, timeout=EXIT_SECONDS, what="dropped log lines counted")
    rt.proc.send_signal(signal.SIGTERM)  # the pipe is still full
    assert rt.proc.wait(EXIT_SECONDS) == 0
    rt.start_reading()
    lines = _json_lines(rt.wait_read_all())
    # What the pipe held: whole lines, the first ones written (start-up, then access lines).
    assert any(line["event"] == "request" for line in lines)


@pytest.mark.timeout(240)
def test_dropped_lines_are_reported_once_the_reader_reads_again(
    started: list[StuckLogProcess],
) -> None:
    rt = StuckLogProcess("echo")
    started.append(rt)
    _flood(rt, "echo", 3000)
    poll(lambda: rt.dropped() > 0, timeout=EXIT_SECONDS, what="dropped log lines counted")
    rt.start_reading()

    def reported() -> list[dict[str, Any]]:
        return [line for line in _json_lines(rt.log_lines())
                if line["event"] == "log lines dropped"]  # fmt: skip

    # The reader catches up; the lines that waited, then one line with the count.
    poll(lambda: bool(reported()), timeout=EXIT_SECONDS, what="the dropped-lines report")
    (report,) = reported()
    assert report["level"] == "warning"
    assert report["count"] == rt.dropped()
    rt.proc.send_signal(signal.SIGTERM)
    assert rt.proc.wait(EXIT_SECONDS) == 0
    lines = _json_lines(rt.wait_read_all())
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) + report["count"] == 3000  # each access line written or counted
    assert lines[-1]["event"] != "request"  # the drain's own lines came after
