"""Render the admin status page to ``dashboards/status-page.png`` (the README's screenshot).

    .venv/bin/python dashboards/status_screenshot.py [--seconds 40] [--out PATH]

Serves the echo example in thread mode with traces (sampled, exported
nowhere), sends 127.0.0.1 traffic of varying rate with some slow and some
failing requests, samples the status every second (the runtime's default is
every 5 s) and takes a headless-Chromium screenshot at the end.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

import runtime
from runtime.admin import AdminServer
from runtime.examples.echo import EchoHandler
from runtime.status import StatusBoard
from runtime.telemetry.logging import make_logger

HERE = Path(__file__).resolve().parent


class _QuietEcho(EchoHandler):
    def handle(self) -> None:
        if random.random() < 0.05:
            time.sleep(random.uniform(0.05, 0.4))
        super().handle()


def _one(address: tuple[str, int], line: bytes) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(line + b"\n")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass


def _traffic(address: tuple[str, int], until: float) -> None:
    start = time.monotonic()
    while (now := time.monotonic()) < until:
        phase = (now - start) % 20
        _one(address, b"fail" if random.random() < 0.02 else b"hello")
        time.sleep(0.002 if phase < 10 else 0.01)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=HERE / "status-page.png")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("status_screenshot: chromium is not installed (make deps)", file=sys.stderr)
        return 2
    telemetry = runtime.Telemetry(tracer_provider=TracerProvider())
    server = runtime.ThreadingTCPServer(
        ("127.0.0.1", 0), _QuietEcho, telemetry=telemetry, server_name="echo",
        logger=make_logger(stream=open("/dev/null", "w")),  # noqa: SIM115
    )  # fmt: skip
    rt = runtime.Runtime(server, handle_signals=False)
    board = StatusBoard(rt.lifecycle, [server], telemetry, interval=1.0)
    admin = AdminServer(
        ("127.0.0.1", 0), lifecycle=rt.lifecycle, render_metrics=telemetry.render, status=board
    )
    admin.start()
    serving = threading.Thread(target=rt.run, daemon=True)
    serving.start()
    until = time.monotonic() + args.seconds
    clients = [
        threading.Thread(target=_traffic, args=(server.server_address, until)) for _ in range(4)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    _one(server.server_address, b"slow")
    profile = tempfile.mkdtemp(prefix="status-screenshot-")
    try:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--window-size=1280,1040",
             "--hide-scrollbars", "--virtual-time-budget=3000", f"--screenshot={args.out}",
             admin.url + "/"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        rt.stop()
        serving.join(30)
        admin.close()
        server.server_close()
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
