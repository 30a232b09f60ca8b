"""Run ``python -m runtime`` as a real process and talk to it on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RUNTIME_", "OTEL_"))}
    e["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    e["PYTHONUNBUFFERED"] = "1"
    return e


def poll(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until *check()* is true, or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class RuntimeProcess:
    """``python -m runtime ARGS`` with its bound address and admin URL parsed from stdout."""

    def __init__(self, *args: str, extra_env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "runtime", *args]
        if "--bind" not in args and "RUNTIME_BIND" not in (extra_env or {}):
            cmd += ["--bind", "127.0.0.1:0"]
        if "--admin" not in args:
            cmd += ["--admin", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**env(), **(extra_env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        second = self.proc.stdout.readline()
        #: Every address it listens on (``--bind`` given more than once), the first first.
        self.addresses = [
            (host.strip("[]"), int(port))
            for host, port in re.findall(r"(?:tcp|udp)://(\[[\w:]+\]|[\d.]+):(\d+)", first)
        ]
        if not self.addresses:
            self.proc.kill()
            raise AssertionError(f"no address in {first!r}; stderr: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.address = self.addresses[0]
        admin = re.search(r"admin (http://[\d.]+:\d+)/", second)
        self.admin = admin.group(1) if admin else ""
        # Drain both pipes from now on: a chatty server (access lines) must never
        # block on a full pipe because the test reads only at the end.
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=_drain, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))
        ]
        for reader in self._readers:
            reader.start()

    def stderr_lines(self) -> list[str]:
        """The lines written to stderr so far."""
        return list(self._err)

    def get(self, path: str, accept: str = "") -> tuple[int, str, str]:
        headers = {"Accept": accept} if accept else {}
        request = urllib.request.Request(self.admin + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of *name* (full sample name) matching *labels* on /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics")[2]):
            for sample in family.samples:
                wanted = all(sample.labels.get(k) == v for k, v in labels.items())
                if sample.name == name and wanted:
                    total += sample.value
        return total

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def state(self) -> str:
        return str(json.loads(self.get("/readyz")[2])["state"])

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the exit; returns the status and everything written to stderr."""
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code, "".join(self._err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(10)


def _drain(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    return sock


def send_all_read_all(address: tuple[Any, ...], payload: bytes, timeout: float = 5) -> bytes:
    """Send *payload* on a new connection, shut down our sending side, and return every
    byte the server sends until it closes the connection."""
    with socket.create_connection(address[:2], timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def echo_line(address: tuple[Any, ...], line: bytes) -> bytes:
    """Send *line* on a new connection and return the first line that comes back."""
    with socket.create_connection(address[:2], timeout=10) as sock:
        sock.sendall(line)
        return sock.makefile("rb").readline()


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False
